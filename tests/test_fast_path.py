"""The fast path's background upgrades on the tiny model (CPU): a fake compile step stands in
for torch.compile, so the switching logic runs for real — only where it happens is checked.
On a GPU the same worker also captures CUDA graphs (bench/gpu_speed.py measures that)."""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.fast_path import FastPath
from pipelines.manager import PipelineManager
from pipelines.core.requests import Control, ControlUnit, InpaintRequest, Limits, Sampling, Txt2ImgRequest
from pipelines.core.warmup import batch_plan, parse_sizes, run_side_by_side, warm_up

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


def fast_manager(model_dir, compiler, max_batch: int = 0, **options) -> PipelineManager:
    # channels_last / fused QKV off: the comparison below is then bit for bit.
    config = FastPath(compile="full", channels_last=False, fuse_qkv=False, compiler=compiler, **options)
    m = PipelineManager(device="cpu", fast_path=config, max_batch=max_batch)
    m.load_base(str(model_dir))
    return m


def test_compiled_path_is_switched_in_between_requests_never_inside_one(tiny_model_dir):
    compiler = FakeCompiler(blocked=True)
    # The request below waits for the compile, which pauses while requests run (compile_yield.py):
    # a small pause credit lets its share of the time come soon.
    m = fast_manager(tiny_model_dir, compiler, yield_burst_s=0.1)
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


def signatures(m) -> dict:
    """Per FastCall: the input signatures it has seen, and its calls served eager."""
    return {call.name: (set(call.count) | set(call.fast), call.served["eager"]) for call in m.fast_runtime.calls}


def test_warmup_covers_every_batch_shape_so_a_full_batch_of_users_runs_compiled(tiny_model_dir):
    """With max_batch 3, three users arriving together are one UNet batch of 6 latents (CFG):
    after --warmup that shape is compiled already, and nothing of their batch runs eager or
    meets a new signature. The images are the ones the same batch gets without warm-up."""
    users = [txt2img(seed=seed, steps=2) for seed in (11, 12, 13)]
    cold = fast_manager(tiny_model_dir, FakeCompiler(), max_batch=3)
    plain, served = run_side_by_side(cold, users)
    assert served == [3]

    warm = fast_manager(tiny_model_dir, FakeCompiler(), max_batch=3)
    warm_up(warm, parse_sizes(f"{SIZE}"))
    assert 3 in warm.batching.served and 2 in warm.batching.served  # the warm-up formed the real batches
    before = signatures(warm)
    unet = warm.pipeline("txt2img").unet._sd_studio_fast
    compiled_before = unet.served["compiled"]
    batched, served = run_side_by_side(warm, users)
    assert served == [3]
    assert signatures(warm) == before  # no new shape, nothing eager: UNet, VAE decode, all of them
    assert unet.served["compiled"] - compiled_before == 2  # both steps of the batch, compiled
    for together, alone in zip(batched, plain):
        assert together.images[0].seed == alone.images[0].seed
        assert np.array_equal(pixels(together), pixels(alone))  # warm-up never changes an image


def test_warmup_keeps_within_the_fast_paths_signature_limit_and_says_what_it_left_out(tiny_model_dir, caplog):
    assert batch_plan([(64, 64), (96, 64)], 3, None) == ([((64, 64), 1), ((96, 64), 1), ((64, 64), 2),
                                                           ((96, 64), 2), ((64, 64), 3), ((96, 64), 3)], [])
    # batch 1 of every size first, then the larger batches while they fit
    # in at most half of the limit: the rest stays for shapes met later (another size, hires)
    assert batch_plan([(64, 64), (96, 64), (64, 64)], 3, 6) == ([((64, 64), 1), ((96, 64), 1), ((64, 64), 2)],
                                                                [((96, 64), 2), ((64, 64), 3), ((96, 64), 3)])
    m = fast_manager(tiny_model_dir, FakeCompiler(), max_batch=3, max_signatures=4)
    with caplog.at_level("WARNING", logger="pipelines.core.warmup"):
        warm_up(m, parse_sizes(f"{SIZE}"))
    assert f"left out (compiled when first met): {SIZE}x{SIZE} batch 3" in caplog.text
    assert m.batching.served[-1] == 2 and 3 not in m.batching.served


def test_a_new_shape_takes_the_place_of_the_one_idle_longest_but_never_of_a_busy_one(tiny_model_dir, manager):
    """All places taken (max_signatures 1 here): a new size stays eager while the compiled
    one is in use, and takes its place once that one has been idle for evict_idle_s; the
    dropped shape is eager again (and would upgrade once a place frees). Images never change."""
    m = fast_manager(tiny_model_dir, FakeCompiler(), max_signatures=1, evict_idle_s=60)
    now = [0.0]
    m.fast_runtime.clock = lambda: now[0]  # idle times stepped by hand, no sleeping
    unet = m.pipeline("txt2img").unet._sd_studio_fast
    square, wide = txt2img(), Limits().normalize(replace(txt2img(), width=96))

    def unet_calls(request) -> Counter:
        before = Counter(unet.served)
        assert np.array_equal(pixels(m.run(request)), pixels(manager.run(request)))
        assert m.fast_runtime.wait_idle(60)
        return Counter(unet.served) - before

    unet_calls(square)
    assert unet_calls(square) == {"compiled": 4}
    now[0] = 30.0  # the square shape was used 30 s ago: busy
    assert unet_calls(wide) == {"eager": 4} and unet.evicted == 0
    assert unet_calls(square) == {"compiled": 4}
    now[0] = 100.0  # idle for 70 s > 60: the wide shape's second call takes its place
    assert unet_calls(wide) == {"eager": 4} and unet.evicted == 1
    assert unet_calls(wide) == {"compiled": 4}
    assert unet_calls(square) == {"eager": 4}  # dropped, and the wide one is busy now


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
    # The compiled ControlNet request, every step: the ControlNet, then the UNet's two halves,
    # the first launched beside the ControlNet (on a GPU: on a second stream) and taken by the UNet.
    assert served["controlnet"]["compiled"] == 4 and served["unet up+residuals"]["compiled"] == 4
    assert served["unet down+mid"]["compiled"] == 4 and m.fast_runtime.overlap.overlapped == 4
    assert served["controlnet hint"]["eager"] == 2  # the control image's embedding: once per request
    # That request taught the ControlNet its UNet's second half, so the worker built the whole
    # step as one function (on a GPU: one CUDA graph) between requests: the next request's every
    # step runs it, the parts are not called apart, and the image stays the plain pipeline's.
    before = {call.name: sum(call.served.values()) for call in m.fast_runtime.calls}
    assert m.fast_runtime.wait_idle(60)
    assert np.array_equal(pixels(m.run(txt2img(control=control))), pixels(manager.run(txt2img(control=control))))
    served = {call.name: sum(call.served.values()) - before.get(call.name, 0) for call in m.fast_runtime.calls}
    assert served["controlnet step (one graph)"] == 4 and m.fast_runtime.overlap.joined == 4
    assert served["controlnet"] == served["unet down+mid"] == served["unet up+residuals"] == 0
    # Two units (the first at weight 0.7 until half the steps, the second at 1 throughout): the
    # first request sums their residuals as diffusers does, and shows which UNet halves follow;
    # the next runs each step whole, both ControlNets and the UNet in one function (on a GPU:
    # one CUDA graph, a side stream per unit). Images: the plain pipeline's, bit for bit.
    second = ControlUnit(model=str(tiny_controlnet_dir), image=Image.fromarray(edges.transpose(1, 0, 2).copy()))
    two = txt2img(control=Control(units=(control.units[0], second)))
    plain_two = pixels(manager.run(two))
    assert np.array_equal(pixels(m.run(two)), plain_two)
    assert m.fast_runtime.overlap.joined == 4 and m.fast_runtime.wait_idle(60)
    before = {call.name: sum(call.served.values()) for call in m.fast_runtime.calls}
    assert np.array_equal(pixels(m.run(two)), plain_two)
    served = {call.name: sum(call.served.values()) - before.get(call.name, 0) for call in m.fast_runtime.calls}
    assert served["controlnet units step (one graph)"] == 4 and m.fast_runtime.overlap.joined == 8
    assert served["controlnet"] == served["unet down+mid"] == served["unet up+residuals"] == 0
    # One unit again: its own joint step, every step.
    assert np.array_equal(pixels(m.run(txt2img(control=control))), pixels(manager.run(txt2img(control=control))))
    assert m.fast_runtime.overlap.joined == 12
    # Two units in guess mode (their residuals padded one by one): one by one, none joins alone.
    guess = txt2img(control=Control(units=(control.units[0], second), guess_mode=True))
    assert np.array_equal(pixels(m.run(guess)), pixels(manager.run(guess)))
    assert m.fast_runtime.overlap.joined == 12


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_the_hires_second_pass_rides_the_fast_path_at_the_final_size(tiny_model_dir, manager, upscaler):
    """The hires fix's img2img pass at 1.5× goes through the same FastCalls as every mode: its
    new signatures run eager, repeat, and are compiled (the UNet's within the first request's
    pass, the VAE's from the second request); a pixel upscaler's VAE encode at the final size too."""
    m = fast_manager(tiny_model_dir, FakeCompiler())
    request = Limits().normalize(Txt2ImgRequest(prompt="a red circle", width=SIZE, height=SIZE, enable_hr=True,
                                                hr_scale=1.5, hr_upscaler=upscaler, denoising_strength=0.5,
                                                sampling=Sampling(scheduler="Euler", steps=4, seed=3)))
    plain = pixels(manager.run(request))
    images = []
    for _ in range(3):
        before = dict(m.fast_runtime.served())
        images.append(pixels(m.run(request)))
        assert m.fast_runtime.wait_idle(60)
    third = {how: n - before.get(how, 0) for how, n in m.fast_runtime.served().items()}
    side = SIZE * 3 // 2  # the final size, 96 px

    def served_at(name: str, width: int) -> set[str]:
        return {how for call in m.fast_runtime.calls if call.name == name
                for key, (_, how) in call.fast.items() if key[0][0][-1] == width}

    assert served_at("unet", side // 8) == {"compiled"}
    assert served_at("vae decode", side // 8) == {"compiled"}
    if upscaler == "Lanczos":  # pass 1 decoded, upscaled in pixels, encoded again at the final size
        assert served_at("vae encode", side) == {"compiled"}
    decodes, encodes = (2, 1) if upscaler == "Lanczos" else (1, 0)
    assert third == {"eager": 0, "compiled": 4 + 2 + decodes + encodes}  # nothing of the third request ran eager
    assert all(np.array_equal(image, plain) for image in images)  # same maths on every path


def test_a_lossy_options_view_is_compiled_only_once_no_plain_compile_waits():
    """Turbo's and token merging's views queue behind every plain call's compile, even when
    they asked first: an opt-in must not delay the upgrade of what every request runs."""
    from pipelines.fast_path import FastPathRuntime

    compiler, order = FakeCompiler(blocked=True), []

    def recording(fn):
        order.append(fn.__name__)
        return compiler(fn)

    runtime = FastPathRuntime(FastPath(compile="full", compiler=recording), torch.device("cpu"), threading.Lock())

    def call(name, lossy=False):
        fn = lambda x: (x + 1,)  # noqa: E731
        fn.__name__ = name
        return runtime.call(name, fn, lossy=lossy)

    calls = [call("busy"), call("turbo view", lossy=True), call("tome view", lossy=True), call("plain a"),
             call("plain b")]
    x = torch.zeros(2)
    for fast in calls:  # the second call of a signature queues its compile; "busy" holds the worker
        fast(x), fast(x)
        if fast.name == "busy":
            while not order:
                threading.Event().wait(0.01)
    compiler.release.set()
    assert runtime.wait_idle(30)
    assert order == ["busy", "plain a", "plain b", "turbo view", "tome view"]
    assert all(fast(x)[0].tolist() == [1.0, 1.0] and fast.served["compiled"] == 1 for fast in calls)
    runtime.close()


def test_the_worker_compiles_more_signatures_of_one_function_than_dynamos_default_limit():
    """Each signature is one more dynamo entry for the same code (dynamic=False); dynamo's
    limit (8 by default) is a per-thread setting in torch 2.14, so the worker thread must raise
    it itself: every signature the fast path keeps (max_signatures) is served compiled."""
    from pipelines.fast_path import FastPathRuntime

    def dynamo(fn):
        return torch.compile(fn, fullgraph=True, dynamic=False, backend="eager")

    runtime = FastPathRuntime(FastPath(compile="full", compiler=dynamo), torch.device("cpu"), threading.Lock())
    fast = runtime.call("twice", lambda x: (x * 2,))
    shapes = [(n,) for n in range(1, 13)]  # 12 signatures: past 8, within max_signatures (16)
    for shape in shapes:
        x = torch.ones(shape)
        fast(x), fast(x)
    assert runtime.wait_idle(120)
    with torch.no_grad():  # as requests run (the worker compiles under no_grad)
        for shape in shapes:
            assert torch.equal(fast(torch.ones(shape))[0], torch.full(shape, 2.0))
    assert fast.served["compiled"] == len(shapes)
    runtime.close()


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


def test_two_units_joint_step_does_not_keep_an_evicted_unit_alive(tiny_model_dir, tiny_controlnet_dir, tmp_path):
    """The step two units run as one function holds their ControlNets' functions weakly: the
    unit evicted from the cache is freed while the other one, which keeps the step, stays."""
    import gc
    import shutil
    import weakref

    other = shutil.copytree(tiny_controlnet_dir, tmp_path / "other-controlnet")
    m = fast_manager(tiny_model_dir, FakeCompiler())
    edges = Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8))
    two = txt2img(control=Control(units=(ControlUnit(model=str(tiny_controlnet_dir), image=edges),
                                         ControlUnit(model=str(other), image=edges))))
    for _ in range(3):
        m.run(two)
        assert m.fast_runtime.wait_idle(60)
    assert m.fast_runtime.overlap.joined == 4  # the third request, every step as one function
    keep, evicted = m.controlnets.loaded()
    gone = weakref.ref(evicted)
    m.controlnets._models = {k: v for k, v in m.controlnets._models.items() if v is keep}
    m._pipelines.pop("controlnet", None)
    del evicted
    gc.collect()
    assert gone() is None and keep is m.controlnets.loaded()[0]


# ------------------------------------------------------------------------------------- SDXL
# The tiny SDXL (tests/tiny_sdxl.py): its UNet and ControlNet calls carry added_cond_kwargs
# (pooled text embedding + size/crop time_ids), flattened into the fast calls' signatures.
def xl_request(kind="txt2img", steps=4, seed=3, **kw):
    from pipelines.core.requests import Img2ImgRequest

    s = Sampling(scheduler="DDIM" if kind == "repaint" else "Euler", steps=steps, seed=seed)
    common = {"prompt": "a red circle", "negative_prompt": "blurry", "width": SIZE, "height": SIZE, "sampling": s, **kw}
    if kind == "txt2img":
        return Limits().normalize(Txt2ImgRequest(**common))
    init = Image.fromarray(np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
    if kind == "img2img":
        return Limits().normalize(Img2ImgRequest(init_image=init, strength=0.6, **common))
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (16, 16, 48, 48))
    return Limits().normalize(InpaintRequest(init_image=init, mask=mask, **common))


@pytest.fixture(scope="module")
def xl_dirs(tmp_path_factory):
    """A tiny SDXL base, a 9-channel SDXL inpainting model and an SDXL ControlNet whose zero
    convolutions are made non-zero (so its residuals act)."""
    from diffusers import ControlNetModel, UNet2DConditionModel
    from tiny_sdxl import save_tiny_xl_inpaint_model, save_tiny_xl_model

    root = tmp_path_factory.mktemp("xl-fast")
    base = save_tiny_xl_model(root / "tiny-sdxl")
    inpaint = save_tiny_xl_inpaint_model(root / "tiny-sdxl-inpaint")
    controlnet = ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(base, subfolder="unet"))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in [*controlnet.controlnet_down_blocks.parameters(), *controlnet.controlnet_mid_block.parameters(),
                  *controlnet.controlnet_cond_embedding.conv_out.parameters()]:
            p.normal_(0, 0.2)
    controlnet.save_pretrained(root / "tiny-sdxl-controlnet")
    return {"base": base, "inpaint": inpaint, "controlnet": root / "tiny-sdxl-controlnet"}


@pytest.fixture(scope="module")
def xl_plain(xl_dirs):
    m = PipelineManager(device="cpu", fast_path=None)
    m.load_base(str(xl_dirs["base"]))
    return m


def test_sdxl_txt2img_switches_to_the_compiled_path_between_requests_with_the_plain_images(xl_dirs, xl_plain):
    compiler = FakeCompiler(blocked=True)
    m = fast_manager(xl_dirs["base"], compiler, yield_burst_s=0.1)  # the request waits for the compile (above)
    unet = m.pipeline("txt2img").unet._sd_studio_fast
    plain = pixels(xl_plain.run(xl_request()))
    during = []

    def on_step(info):
        if info.step == 2:  # the UNet's compile finishes while this request is half-way
            compiler.release.set()
            assert compiler.compiled.wait(60)
        during.append(dict(unet.served))

    first = m.run(xl_request(), on_step=on_step)
    assert during[-1] == {"eager": 4}  # the whole first request ran eager, also after the compile
    assert m.fast_runtime.wait_idle(60)
    second = m.run(xl_request())
    assert unet.served == {"eager": 4, "compiled": 4}  # SDXL's UNet (added_cond_kwargs and all) compiled
    assert m.fast_runtime.wait_idle(60)
    third = m.run(xl_request())
    assert m.fast_runtime.served()["compiled"] == 4 + 5  # then the UNet steps and the VAE decode too
    for result in (first, second, third):
        assert np.array_equal(pixels(result), plain)  # the plain manager's image, whichever path served
    # The size conditioning is an input of the compiled call, not a constant of it: other
    # time_ids, same signature, served compiled, and the plain manager's image again.
    other = xl_request(original_width=16, original_height=16, crop_top=8)
    before = unet.served["compiled"]
    assert np.array_equal(pixels(m.run(other)), pixels(xl_plain.run(other)))
    assert unet.served["compiled"] == before + 4 and not np.array_equal(pixels(xl_plain.run(other)), plain)


def test_sdxl_turbo_and_token_merging_views_trace_whole_with_the_added_conditioning(xl_dirs, xl_plain):
    """SDXL's views carry the size conditioning as extra tensors: dynamo (fullgraph, its eager
    backend here) traces them whole, and the compiled calls give the plain manager's images."""
    def dynamo(fn):
        return torch.compile(fn, fullgraph=True, dynamic=False, backend="eager")

    m = fast_manager(xl_dirs["base"], dynamo)
    requests = [xl_request(steps=6, turbo="DeepCache 2"), xl_request(steps=6, token_merging=0.5),
                xl_request(steps=6, turbo="DeepCache 2", token_merging=0.5)]
    for request in requests:
        m.run(request)
    assert m.fast_runtime.wait_idle(300)
    for request in requests:
        assert np.array_equal(pixels(m.run(request)), pixels(xl_plain.run(request)))
    views = [call for call in m.fast_runtime.calls if call.lossy and call.served]
    assert {call.name for call in views} == {"unet turbo full", "unet turbo shallow", "unet tome 0.5"}
    assert all(call.served["compiled"] > 0 for call in views)
    m.fast_runtime.close()


def test_every_sdxl_mode_on_the_fast_path_gives_the_plain_managers_images(xl_dirs, xl_plain):
    m = fast_manager(xl_dirs["base"], FakeCompiler())
    edges = np.zeros((SIZE, SIZE, 3), np.uint8)
    edges[16:48, 16] = edges[16, 16:48] = 255
    control = Control(units=(ControlUnit(model=str(xl_dirs["controlnet"]), image=Image.fromarray(edges), weight=0.7,
                                         end=0.75),))
    requests = {
        "img2img": xl_request("img2img"),
        "RePaint": xl_request("repaint"),
        "9-channel": xl_request("inpaint", mode="inpainting model", inpaint_model=str(xl_dirs["inpaint"])),
        "ControlNet": xl_request(control=control),
    }
    for name, request in requests.items():
        plain = pixels(xl_plain.run(request))
        assert np.array_equal(pixels(m.run(request)), plain), name  # eager, through the wrappers
        assert m.fast_runtime.wait_idle(60)
        assert np.array_equal(pixels(m.run(request)), plain), name  # compiled
        assert m.fast_runtime.wait_idle(60)
    served = {}
    for call in m.fast_runtime.calls:
        served.setdefault(call.name, []).append(dict(call.served))
    assert served["controlnet"][0]["compiled"] == 4  # the second ControlNet request, every step ...
    # ... and the base UNet's halves around its residuals (the 9-channel UNet has a first half too, unused here)
    assert sum(s.get("compiled", 0) for s in served["unet down+mid"]) == 4
    assert sum(s.get("compiled", 0) for s in served["unet up+residuals"]) == 4
    assert served["vae encode"][0]["compiled"] >= 1
    nine = m.inpaint_unet(str(xl_dirs["inpaint"]))._sd_studio_fast
    assert nine.served["compiled"] > 0 and nine is not m.pipeline("txt2img").unet._sd_studio_fast
    # The ControlNet step, and two units' step, as one function each (with the SDXL conditioning).
    two = xl_request(control=Control(units=(control.units[0], ControlUnit(model=str(xl_dirs["controlnet"]),
                                                                          image=Image.fromarray(edges[::-1].copy())))))
    for request in (requests["ControlNet"], two, two):
        joined = m.fast_runtime.overlap.joined
        assert np.array_equal(pixels(m.run(request)), pixels(xl_plain.run(request)))
        assert m.fast_runtime.wait_idle(60)
    assert m.fast_runtime.overlap.joined - joined == 4  # the last request's every step
    # The fp32 SDXL VAE (force_upcast) keeps its weights where graphs captured them.
    vae = m.pipeline("txt2img").vae
    pointer = vae.decoder.conv_out.weight.data_ptr()
    vae.to(torch.float16)
    assert vae.dtype == torch.float32 and vae.decoder.conv_out.weight.data_ptr() == pointer


def test_the_sdxl_text_encoders_through_the_fast_wrapper_give_the_plain_embeddings(xl_plain):
    """Both encoders with the hidden states SDXL reads (penultimate layer, clip skip) and the
    pooled/projected output, rebuilt from the fast call's flat tuple of tensors."""
    from pipelines.fast_path import FastPathRuntime, _wrap_text_encoder
    from pipelines.prompt_encoding import encode_prompts
    from tiny_sdxl import tiny_xl_pipeline

    pipe, cpu = tiny_xl_pipeline(seed=0), torch.device("cpu")
    prompts = [("a (red:1.3) circle", "blurry", 1), (" ".join(["red circle"] * 50), "", 2)]  # emphasis; 2 chunks, clip skip
    before = [encode_prompts(pipe, p, n, skip, True, cpu) for p, n, skip in prompts]
    runtime = FastPathRuntime(FastPath(compile="none"), cpu, threading.Lock())
    _wrap_text_encoder(runtime, pipe.text_encoder)
    _wrap_text_encoder(runtime, pipe.text_encoder_2)
    after = [encode_prompts(pipe, p, n, skip, True, cpu) for p, n, skip in prompts]
    for b, a in zip(before, after):
        for field in ("cond", "uncond", "pooled", "uncond_pooled"):
            assert torch.equal(getattr(b, field), getattr(a, field)), field
    served = Counter()
    for call in runtime.calls:  # per encoder: one call with the hidden states, one without
        served[call.name] += sum(call.served.values())
    assert served["text encoder"] > 0 and served["text encoder 2"] > 0  # every encoding went through them


def save_tiny_xl_lora(folder, base_dir, seed: int = 2, scale: float = 0.3):
    """A diffusers/PEFT SDXL LoRA (UNet and both text encoders) with random non-zero weights."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from tiny_adapters import TEXT_TARGETS, UNET_TARGETS
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    modules = [inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=targets), loader.from_pretrained(base_dir, subfolder=sub))
               for loader, sub, targets in ((UNet2DConditionModel, "unet", UNET_TARGETS),
                                            (CLIPTextModel, "text_encoder", TEXT_TARGETS),
                                            (CLIPTextModelWithProjection, "text_encoder_2", TEXT_TARGETS))]
    g = torch.Generator().manual_seed(seed)
    unet, one, two = [{k: torch.randn(v.shape, generator=g) * scale for k, v in get_peft_model_state_dict(m).items()}
                      for m in modules]
    StableDiffusionXLPipeline.save_lora_weights(folder, unet_lora_layers=unet, text_encoder_lora_layers=one,
                                                text_encoder_2_lora_layers=two)
    return folder


def test_an_sdxl_lora_on_the_fast_path_follows_the_sd_rule(xl_dirs, xl_plain, tmp_path):
    """As for SD 1.x (the test above): the LoRA (UNet and both text encoders) is merged in place,
    fused QKV/KV projections refreshed, so LoRA requests replay the same compiled UNet; its image
    is close to diffusers' unmerged LoRA's, and a request without the tag is the plain image bit
    for bit."""
    from pipelines.core import catalog

    save_tiny_xl_lora(tmp_path / "Lora" / "xl-lora", xl_dirs["base"])
    catalog.configure(tmp_path)
    try:
        config = FastPath(compile="full", channels_last=False, fuse_qkv=True, compiler=FakeCompiler())
        m = PipelineManager(device="cpu", fast_path=config)
        m.load_base(str(xl_dirs["base"]))
        unet = m.pipeline("txt2img").unet._sd_studio_fast
        without, with_lora = xl_request(), xl_request(prompt="a red circle <lora:xl-lora:0.8>")
        m.run(without)
        assert m.fast_runtime.wait_idle(60)
        plain = pixels(m.run(without))
        compiled_before = unet.served["compiled"]
        lora = pixels(m.run(with_lora))
        assert unet.served["compiled"] == compiled_before + 4  # the LoRA request replayed the compiled UNet
        assert np.array_equal(pixels(m.run(without)), plain)  # nothing left behind, bit for bit
        reference_lora, reference_plain = pixels(xl_plain.run(with_lora)), pixels(xl_plain.run(without))
        effect = np.abs(reference_lora - reference_plain).mean()
        assert effect > 1.0  # the LoRA acts ...
        assert np.abs(lora - reference_lora).mean() < 0.1 * effect  # ... merged as unmerged, up to rounding
        assert np.abs(plain - reference_plain).mean() < 0.1 * effect  # fused QKV: rounding only
    finally:
        catalog.configure(None)


def test_the_sdxl_refiner_hand_off_on_the_fast_path_gives_the_plain_image(xl_dirs, xl_plain, tmp_path):
    from tiny_sdxl import save_tiny_xl_refiner

    folder = str(save_tiny_xl_refiner(tmp_path / "xl-refiner"))
    m = fast_manager(xl_dirs["base"], FakeCompiler())
    request = xl_request(refiner=folder, refiner_switch=0.5)
    plain = pixels(xl_plain.run(request))
    for _ in range(2):
        assert np.array_equal(pixels(m.run(request)), plain)
        assert m.fast_runtime.wait_idle(60)
    refiner_unet = m.refiner(folder).unet._sd_studio_fast  # its own UNet (5 time ids) on the ladder too
    assert refiner_unet.served["compiled"] == 2 and refiner_unet is not m.pipeline("txt2img").unet._sd_studio_fast


def test_lora_on_the_fast_path_is_merged_into_the_same_graphs_and_leaves_nothing_behind(tiny_model_dir, tmp_path):
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
        # the same LoRA unmerged, without the fast path (a manager of its own: the shared
        # fixture must not carry LoRA layers into other tests): the merged one matches it closely
        reference = PipelineManager(device="cpu")
        reference.load_base(str(tiny_model_dir))
        reference_lora, reference_plain = pixels(reference.run(with_lora)), pixels(reference.run(txt2img()))
        effect = np.abs(reference_lora - reference_plain).mean()
        assert effect > 1.0
        assert np.abs(lora - reference_lora).mean() < 0.1 * effect
    finally:
        catalog.configure(None)


def test_an_fp16_sdxl_vae_keeps_its_weights_where_graphs_read_them(xl_dirs):
    """diffusers' SDXL pipelines convert a force_upcast VAE to fp32 and back around each encode
    and decode (new storage each time: a captured graph would read freed memory). On the fast
    path it stays in fp32 with the same storage, and the images are the plain manager's (which
    does those round trips: the same fp32 maths)."""
    plain = PipelineManager(device="cpu", dtype="fp16", fast_path=None)
    plain.load_base(str(xl_dirs["base"]))
    m = PipelineManager(device="cpu", dtype="fp16", fast_path=FastPath(
        compile="full", channels_last=False, fuse_qkv=False, compiler=FakeCompiler()))
    m.load_base(str(xl_dirs["base"]))
    vae = m.pipeline("txt2img").vae
    weights = [p.data_ptr() for p in vae.parameters()]
    for request in (xl_request(steps=2), xl_request("img2img", steps=3)) * 2:
        assert np.array_equal(pixels(m.run(request)), pixels(plain.run(request)))
        assert m.fast_runtime.wait_idle(60)
    assert "sdxl_vae_fp32" in m.fast_path_applied and m.pipeline("img2img").vae.dtype == torch.float32
    assert [p.data_ptr() for p in vae.parameters()] == weights
    assert m.fast_runtime.served()["compiled"] > 0
