"""The fast path's background upgrades on the tiny model (CPU): a fake compile step stands in
for torch.compile, so the switching logic runs for real — only where it happens is checked.
On a GPU the same worker also captures CUDA graphs (bench/gpu_speed.py measures that)."""
from __future__ import annotations

import threading

import numpy as np
from PIL import Image

from pipelines.fast_path import FastPath
from pipelines.manager import PipelineManager
from pipelines.core.requests import Control, ControlUnit, InpaintRequest, Limits, Sampling, Txt2ImgRequest
from pipelines.core.warmup import parse_sizes, warm_up

SIZE = 64


def txt2img(seed=3, steps=4, control=None) -> Txt2ImgRequest:
    return Limits().normalize(Txt2ImgRequest(prompt="a red circle", width=SIZE, height=SIZE, control=control,
                                             sampling=Sampling(scheduler="Euler", steps=steps, seed=seed)))


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image, dtype=np.int16)


class FakeCompiler:
    """fn -> the same fn, tagged; its first run (the 'compile') waits for `release`."""

    def __init__(self, blocked: bool = False):
        self.release = threading.Event()
        self.compiled = threading.Event()  # set when a first run has finished
        if not blocked:
            self.release.set()

    def __call__(self, fn):
        first = [True]

        def compiled(*args):
            if first[0]:
                self.release.wait(60)
                first[0] = False
                out = fn(*args)
                self.compiled.set()
                return out
            return fn(*args)

        return compiled


def fast_manager(model_dir, compiler) -> PipelineManager:
    # channels_last / fused QKV off: the comparison below is then bit for bit.
    config = FastPath(compile="full", channels_last=False, fuse_qkv=False, compiler=compiler)
    m = PipelineManager(device="cpu", fast_path=config)
    m.load_base(str(model_dir))
    return m


def test_compiled_path_is_switched_in_between_requests_never_inside_one(tiny_model_dir):
    compiler = FakeCompiler(blocked=True)
    m = fast_manager(tiny_model_dir, compiler)
    unet = m.pipeline("txt2img").unet._sd_studio_fast
    during = []

    def on_step(info):
        if info.step == 2:  # the compile finishes while this request is half-way
            compiler.release.set()
            assert compiler.compiled.wait(60)
        during.append(dict(unet.served))

    first = m.run(txt2img(), on_step=on_step)
    assert during[-1] == {"eager": 4}  # every step of the first request ran eager, also after the compile
    assert m.fast_runtime.wait_idle(60)
    second = m.run(txt2img())
    assert unet.served == {"eager": 4, "compiled": 4}
    assert m.fast_runtime.wait_idle(60)  # the VAE decode repeated in the second request: upgraded now
    third = m.run(txt2img())
    assert m.fast_runtime.served()["compiled"] == 4 + 5  # then 4 UNet steps and the decode
    assert np.array_equal(pixels(first), pixels(second))  # same maths, whichever path served
    assert np.array_equal(pixels(first), pixels(third))


def test_a_signature_seen_once_is_never_compiled(tiny_model_dir):
    compiler = FakeCompiler()
    m = fast_manager(tiny_model_dir, compiler)
    m.run(txt2img(steps=1))  # one UNet call, one decode: nothing repeats
    assert m.fast_runtime.wait_idle(60)
    assert not compiler.compiled.is_set()
    assert all(not call.fast for call in m.fast_runtime.calls)


def test_warmup_serves_the_first_request_compiled(tiny_model_dir):
    m = fast_manager(tiny_model_dir, FakeCompiler())
    warm_up(m, parse_sizes(f"{SIZE}"))
    served = dict(m.fast_runtime.served())
    m.run(txt2img(steps=3))
    after = m.fast_runtime.served()
    assert after["eager"] == served["eager"]  # nothing of the user's first request ran eager
    assert after["compiled"] - served.get("compiled", 0) == 4  # 3 UNet steps + the decode


def test_controlnet_and_repaint_on_the_fast_path_give_the_plain_pipelines_images(tiny_model_dir, tiny_controlnet_dir,
                                                                                  manager):
    m = fast_manager(tiny_model_dir, FakeCompiler())
    edges = np.zeros((SIZE, SIZE, 3), np.uint8)
    edges[16:48, 16] = edges[16, 16:48] = 255
    control = Control(units=(ControlUnit(model=str(tiny_controlnet_dir), image=Image.fromarray(edges), weight=0.7,
                                         end=0.5),))
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (16, 16, 48, 48))
    repaint = Limits().normalize(InpaintRequest(prompt="a red circle", width=SIZE, height=SIZE, mask=mask,
                                                init_image=Image.new("RGB", (SIZE, SIZE), (40, 90, 200)),
                                                sampling=Sampling(scheduler="DDIM", steps=4, seed=5)))
    for request in (txt2img(control=control), repaint):
        plain = pixels(manager.run(request))
        assert np.array_equal(pixels(m.run(request)), plain)  # eager, through the wrappers
        assert m.fast_runtime.wait_idle(60)
        assert np.array_equal(pixels(m.run(request)), plain)  # compiled
    served = {call.name: dict(call.served) for call in m.fast_runtime.calls}
    assert served["controlnet"]["compiled"] == 4 and served["unet+controlnet residuals"]["compiled"] == 4


def test_a_waiting_upgrade_is_not_starved_by_back_to_back_requests():
    """The manager's lock is first come, first served: a request that releases it and asks
    again at once queues behind the worker already waiting to switch a graph in."""
    from pipelines.fast_path import FifoLock

    lock, order = FifoLock(), []
    lock.acquire()  # a request is running
    waiting = threading.Thread(target=lambda: (lock.acquire(), order.append("upgrade"), lock.release()))
    waiting.start()
    while lock._next_ticket < 2:  # the worker has queued
        threading.Event().wait(0.01)
    lock.release()
    with lock:  # the next request, straight after
        order.append("next request")
    waiting.join(5)
    assert order == ["upgrade", "next request"]


def test_an_evicted_controlnet_is_freed_with_its_fast_path(tiny_model_dir, tiny_controlnet_dir):
    import gc
    import weakref

    m = fast_manager(tiny_model_dir, FakeCompiler())
    edges = Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8))
    m.run(txt2img(control=Control(units=(ControlUnit(model=str(tiny_controlnet_dir), image=edges),))))
    assert m.fast_runtime.wait_idle(60)
    controlnet = weakref.ref(m.controlnets.loaded()[0])
    m.controlnets.clear()
    m._pipelines.pop("controlnet", None)  # the latest derived pipeline, kept for memory reports
    gc.collect()
    assert controlnet() is None


def test_lora_on_the_fast_path_is_merged_into_the_same_graphs_and_leaves_nothing_behind(tiny_model_dir, manager,
                                                                                        tmp_path):
    """With the fast path a LoRA is merged into the weights in place (fused QKV refreshed too),
    so LoRA requests replay the same compiled graphs as plain ones, and the weights come back
    bit for bit afterwards."""
    from pipelines.core import catalog
    from tiny_adapters import save_kohya_lora

    save_kohya_lora(tmp_path / "Lora" / "tiny-kohya.safetensors", tiny_model_dir, seed=0)
    catalog.configure(tmp_path)
    try:
        config = FastPath(compile="full", channels_last=False, fuse_qkv=True, compiler=FakeCompiler())
        m = PipelineManager(device="cpu", fast_path=config)
        m.load_base(str(tiny_model_dir))
        unet = m.pipeline("txt2img").unet._sd_studio_fast
        with_lora = Limits().normalize(Txt2ImgRequest(prompt="a red circle <lora:tiny-kohya:1>", width=SIZE, height=SIZE,
                                                      sampling=Sampling(scheduler="Euler", steps=4, seed=3)))
        m.run(txt2img())
        assert m.fast_runtime.wait_idle(60)
        plain = pixels(m.run(txt2img()))
        compiled_before = unet.served["compiled"]
        lora = pixels(m.run(with_lora))
        assert unet.served["compiled"] == compiled_before + 4  # the LoRA request replayed the compiled UNet
        after = pixels(m.run(txt2img()))
        assert np.array_equal(after, plain), "the plain request after a LoRA one must see the base weights bit for bit"
        # the same LoRA unmerged, without the fast path: the merged one matches it closely
        reference_lora, reference_plain = pixels(manager.run(with_lora)), pixels(manager.run(txt2img()))
        effect = np.abs(reference_lora - reference_plain).mean()
        assert effect > 1.0
        assert np.abs(lora - reference_lora).mean() < 0.1 * effect
    finally:
        catalog.configure(None)
