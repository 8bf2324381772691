"""The shared pipeline manager on a tiny random SD model: real diffusers pipelines, no mocks."""
from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.core.errors import GenerationError, ModelLoadError, RequestError
from pipelines.core.jobs import Job
from pipelines.manager import PipelineManager
from pipelines.core.requests import Img2ImgRequest, Limits, Sampling, Txt2ImgRequest
from pipelines.core.schedulers import SCHEDULER_NAMES

SIZE = 64


def txt2img(prompt="a red circle", **sampling) -> Txt2ImgRequest:
    sampling = {"steps": 6, "seed": 1, **sampling}
    return Limits().normalize(Txt2ImgRequest(prompt=prompt, width=SIZE, height=SIZE, sampling=Sampling(**sampling)))


def img2img(image, strength, prompt="a red circle", **sampling) -> Img2ImgRequest:
    sampling = {"steps": 10, "seed": 1, **sampling}
    return Limits().normalize(Img2ImgRequest(prompt=prompt, width=SIZE, height=SIZE, init_image=image,
                                             strength=strength, sampling=Sampling(**sampling)))


def pixels(result, index=0) -> np.ndarray:
    return np.asarray(result.images[index].image, dtype=np.int16)


def checkerboard(colour_a, colour_b) -> Image.Image:
    tile = np.indices((SIZE, SIZE)).sum(axis=0) // 8 % 2
    array = np.where(tile[..., None] == 1, colour_a, colour_b).astype(np.uint8)
    return Image.fromarray(array)


class UNetCalls:
    """Counts UNet forward passes and the batch each one saw."""

    def __init__(self, unet):
        self.batches: list[int] = []
        self.handle = unet.register_forward_pre_hook(lambda module, args, kwargs: self.batches.append(args[0].shape[0]), with_kwargs=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# ----------------------------------------------------------------- one copy of the weights
def test_task_pipelines_share_the_same_module_objects(manager):
    t2i, i2i = manager.pipeline("txt2img"), manager.pipeline("img2img")
    for name in ("unet", "vae", "text_encoder", "tokenizer"):
        assert getattr(t2i, name) is getattr(i2i, name), name
    for name in ("unet", "vae", "text_encoder"):
        a = {p.data_ptr() for p in getattr(t2i, name).parameters()}
        b = {p.data_ptr() for p in getattr(i2i, name).parameters()}
        assert a == b, name
    report = manager.memory_report()
    assert set(report["modes"]) >= {"txt2img", "img2img"}
    assert report["shared_bytes"] == report["base_bytes"] > 0  # derived pipelines copy nothing
    assert report["all_modes_bytes"] == report["base_bytes"] + report["extra_bytes"]


# ----------------------------------------------------------------- seeds
def test_same_seed_gives_identical_images(manager):
    assert np.array_equal(pixels(manager.run(txt2img(seed=7))), pixels(manager.run(txt2img(seed=7))))


def test_different_seeds_give_different_images(manager):
    assert not np.array_equal(pixels(manager.run(txt2img(seed=7))), pixels(manager.run(txt2img(seed=8))))


def test_image_k_of_a_batch_is_reproducible_from_its_own_seed(manager):
    batch = manager.run(txt2img(seed=20, batch_size=2, batch_count=2))
    assert [item.seed for item in batch.images] == [20, 21, 22, 23]
    alone = manager.run(txt2img(seed=23))
    # Batched matmuls may round differently from single ones: allow one grey level.
    assert np.abs(pixels(batch, 3) - pixels(alone)).max() <= 1
    assert "Seed: 23" in batch.images[3].infotext


# ----------------------------------------------------------------- schedulers
@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_every_scheduler_runs_and_is_recorded(manager, name):
    result = manager.run(txt2img(scheduler=name, steps=4, eta=0.5))
    image = pixels(result)
    assert image.shape == (SIZE, SIZE, 3) and image.std() > 0
    assert f"Sampler: {name}," in result.images[0].infotext


def test_a_request_does_not_change_the_models_own_scheduler(manager):
    before = dict(manager._scheduler_config)
    manager.run(txt2img(scheduler="DPM++ 2M SDE Karras", steps=3))
    assert manager._scheduler_config == before
    assert manager._scheduler_config["beta_schedule"] == "scaled_linear"


def test_ddim_eta_zero_is_deterministic_and_eta_one_adds_noise(manager):
    deterministic = [pixels(manager.run(txt2img(scheduler="DDIM", eta=0.0, seed=s))) for s in (3, 3)]
    assert np.array_equal(*deterministic)
    assert not np.array_equal(deterministic[0], pixels(manager.run(txt2img(scheduler="DDIM", eta=1.0, seed=3))))


# ----------------------------------------------------------------- CFG
def test_cfg_off_runs_one_unet_pass_per_step_and_differs_from_cfg_on(manager):
    unet = manager.pipeline("txt2img").unet
    with UNetCalls(unet) as off:
        without = manager.run(txt2img(cfg=False, scheduler="Euler", steps=5))
    with UNetCalls(unet) as on:
        with_cfg = manager.run(txt2img(cfg=True, cfg_scale=7, scheduler="Euler", steps=5))
    assert off.batches == [1] * 5  # conditional pass only
    assert on.batches == [2] * 5  # unconditional + conditional, batched
    assert not np.array_equal(pixels(without), pixels(with_cfg))
    assert "CFG: off" in without.images[0].infotext and "CFG: off" not in with_cfg.images[0].infotext


def test_negative_prompt_with_cfg_off_is_explained(manager):
    result = manager.run(Limits().normalize(Txt2ImgRequest(
        prompt="x", negative_prompt="blurry", width=SIZE, height=SIZE, sampling=Sampling(cfg=False, steps=2, seed=1))))
    assert any("negative prompt has no effect" in n for n in result.notes)


# ----------------------------------------------------------------- img2img strength
def test_strength_zero_returns_the_input_unchanged(manager):
    init = checkerboard((250, 10, 10), (10, 10, 250))
    result = manager.run(img2img(init, 0.0))
    assert np.array_equal(pixels(result), np.asarray(init, dtype=np.int16))
    assert "Denoising strength: 0," in result.images[0].infotext


def test_strength_one_ignores_the_input(manager):
    a = manager.run(img2img(checkerboard((250, 10, 10), (10, 10, 250)), 1.0, seed=5))
    b = manager.run(img2img(Image.new("RGB", (SIZE, SIZE), "white"), 1.0, seed=5))
    plain = manager.run(txt2img(seed=5, steps=10))
    assert np.array_equal(pixels(a), pixels(b))
    assert np.array_equal(pixels(a), pixels(plain))


def test_strength_sets_the_fraction_of_the_schedule_that_is_rerun(manager):
    unet = manager.pipeline("img2img").unet
    init = checkerboard((250, 10, 10), (10, 10, 250))
    for strength, expected in ((0.3, 3), (0.5, 5), (0.8, 8)):
        with UNetCalls(unet) as calls:
            manager.run(img2img(init, strength, scheduler="Euler", steps=10))
        assert len(calls.batches) == expected, strength


def test_lower_strength_stays_closer_to_the_input(manager):
    init = checkerboard((250, 10, 10), (10, 10, 250))
    reference = np.asarray(init, dtype=np.float32)
    distances = []
    for strength in (0.2, 0.5, 0.9):
        outputs = [pixels(manager.run(img2img(init, strength, seed=s))) for s in (1, 2, 3)]
        distances.append(np.mean([np.abs(o - reference).mean() for o in outputs]))
    assert distances[0] < distances[1] < distances[2], distances


def test_tiny_strength_that_rounds_to_zero_steps_is_explained(manager):
    init = checkerboard((250, 10, 10), (10, 10, 250))
    result = manager.run(img2img(init, 0.05, steps=10))
    assert np.array_equal(pixels(result), np.asarray(init, dtype=np.int16))
    assert any("rounds to 0 denoising steps" in n for n in result.notes)


def test_init_image_of_another_size_and_mode_is_fitted(manager):
    rgba = Image.new("RGBA", (100, 30), (255, 0, 0, 0))  # fully transparent: flattened onto white
    result = manager.run(img2img(rgba, 0.0))
    assert result.images[0].image.size == (SIZE, SIZE)
    assert pixels(result).min() == 255


# ----------------------------------------------------------------- progress and interrupt
def test_every_step_reports_progress_with_a_preview(manager):
    steps = []
    manager.run(txt2img(steps=4, batch_count=2), on_step=steps.append)
    assert [(s.batch, s.step, s.total) for s in steps] == [(b, i, 4) for b in range(2) for i in range(1, 5)]
    assert all(s.preview is not None and s.preview.size == (SIZE, SIZE) for s in steps)
    assert steps[-1].fraction == 1.0


def test_interrupt_stops_within_one_step_and_skips_later_batches(manager):
    job = Job()

    def stop_at_two(step):
        if step.step == 2:
            job.cancel()

    with UNetCalls(manager.pipeline("txt2img").unet) as calls:
        result = manager.run(txt2img(steps=10, batch_count=3, scheduler="Euler"), on_step=stop_at_two, job=job)
    assert len(calls.batches) == 2
    assert result.interrupted and len(result.images) == 1
    assert any("Interrupted at step 2/10" in n for n in result.notes)


def test_interrupt_from_another_thread_stops_only_that_job(manager):
    job, other = Job(), Job()
    started = threading.Event()

    def on_step(step):
        started.set()

    results = {}
    worker = threading.Thread(target=lambda: results.update(a=manager.run(txt2img(steps=200), on_step=on_step, job=job)))
    worker.start()
    assert started.wait(60)
    job.cancel()
    worker.join(60)
    assert results["a"].interrupted
    assert not other.cancelled
    assert not manager.run(txt2img(steps=3), job=other).interrupted


# ----------------------------------------------------------------- prompts
def test_overlong_prompt_is_chunked_not_cut_and_the_user_is_told(manager):
    prompt = " ".join(["red"] * 70 + ["circle"] * 10 + ["zebra"])
    result = manager.run(txt2img(prompt=prompt, steps=2))
    note = next(n for n in result.notes if "tokens" in n)
    assert "81 tokens" in note and "2 chunks" in note and "nothing is cut" in note


def test_unnormalized_request_is_refused(manager):
    with pytest.raises(RequestError, match="normalized"):
        manager.run(Txt2ImgRequest(prompt="x", width=SIZE, height=SIZE, sampling=Sampling(seed=-1)))


# ----------------------------------------------------------------- failures keep serving
def fresh_manager(model_dir) -> PipelineManager:
    m = PipelineManager(device="cpu")
    m.load_base(str(model_dir))
    return m


def test_out_of_memory_is_reported_freed_and_the_next_job_runs(tiny_model_dir):
    m = fresh_manager(tiny_model_dir)
    unet = m.pipeline("txt2img").unet

    def explode(module, args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    handle = unet.register_forward_pre_hook(explode)
    with pytest.raises(GenerationError, match="Out of GPU memory at 64×64, batch size 1"):
        m.run(txt2img())
    handle.remove()
    assert len(m.run(txt2img()).images) == 1


def test_generating_without_a_model_says_what_to_pass():
    with pytest.raises(GenerationError, match="--model"):
        PipelineManager(device="cpu").run(txt2img())


@pytest.mark.parametrize("source, message", [
    ("/no/such/folder", "does not exist"),
    ("tests", "not a diffusers pipeline"),
    ("pytest.ini", "not a checkpoint file"),
    ("", "No model given"),
])
def test_bad_model_sources_get_a_clear_message(source, message):
    with pytest.raises(ModelLoadError, match=message):
        PipelineManager(device="cpu").load_base(source)


def test_hub_id_offline_fails_fast_with_instructions():
    outcome = {}

    def load():
        try:
            PipelineManager(device="cpu").load_base("someone/never-downloaded-model")
        except ModelLoadError as error:
            outcome["error"] = str(error)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(120)  # a hang guard, not a speed assertion
    assert not worker.is_alive(), "loading a Hub id offline hung"
    assert "not in the local Hugging Face cache" in outcome["error"] and "--allow-download" in outcome["error"]


def test_corrupt_weights_fail_clearly_and_keep_the_previous_model(tiny_model_dir, tmp_path):
    m = fresh_manager(tiny_model_dir)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])  # a half-finished download
    with pytest.raises(ModelLoadError, match="incomplete or corrupt"):
        m.load_base(str(broken))
    assert m.model.name == tiny_model_dir.name
    assert len(m.run(txt2img(steps=2)).images) == 1


def test_a_single_file_checkpoint_loads_and_generates_like_its_diffusers_folder(tiny_model_dir, tmp_path, manager):
    from ldm_checkpoint import save_single_file

    checkpoint = save_single_file(manager.pipeline("txt2img"), tmp_path / "tiny.safetensors", dtype=None)
    single = PipelineManager(device="cpu", single_file_config=str(tiny_model_dir))
    single.load_base(str(checkpoint))
    assert single.model.source.kind == "single_file" and single.model.name == "tiny"
    assert np.array_equal(pixels(single.run(txt2img(seed=9))), pixels(manager.run(txt2img(seed=9))))


def test_a_single_file_without_a_matching_config_says_which_flag_to_pass(tmp_path, manager):
    from ldm_checkpoint import save_single_file

    checkpoint = save_single_file(manager.pipeline("txt2img"), tmp_path / "tiny.safetensors")
    with pytest.raises(ModelLoadError, match="--single-file-config"):
        PipelineManager(device="cpu", single_file_config=None).load_base(str(checkpoint))


def test_vae_tiling_setting_reaches_the_shared_vae(tiny_model_dir):
    m = PipelineManager(device="cpu", vae_tiling=True)
    m.load_base(str(tiny_model_dir))
    assert m.pipeline("img2img").vae.use_tiling
    assert len(m.run(txt2img(steps=2)).images) == 1


def test_fast_path_wrappers_keep_the_maths_on_cpu(tiny_model_dir, manager):
    """On CPU the CUDA-graph wrappers fall through to the ordinary forward, and channels_last
    and fused QKV projections change rounding only."""
    from pipelines.fast_path import FastPath

    fast = PipelineManager(device="cpu", fast_path=FastPath(compile="none"))
    fast.load_base(str(tiny_model_dir))
    assert fast.fast_path_applied == ["channels_last", "fused_qkv", "cuda_graphs"]
    assert np.abs(pixels(fast.run(txt2img(seed=4))) - pixels(manager.run(txt2img(seed=4)))).max() <= 2
    assert PipelineManager(device="cpu").fast_path is None  # auto: off on CPU


def test_deriving_task_pipelines_keeps_the_shared_weights_in_half_precision(tiny_model_dir, tiny_controlnet_dir):
    """diffusers' from_pipe casts every module to float32 unless told the dtype: on a GPU that
    would double the memory of the shared weights and invalidate captured CUDA graphs."""
    m = PipelineManager(device="cpu", dtype="bf16")
    m.load_base(str(tiny_model_dir))
    unet = m.pipeline("txt2img").unet
    m.pipeline("img2img")
    controlnet = m.controlnets.get(str(tiny_controlnet_dir), unet, m.device, m.dtype, allow_download=False)
    m.pipeline("controlnet", controlnet=controlnet)
    assert {p.dtype for p in unet.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in controlnet.parameters()} == {torch.bfloat16}
    report = m.memory_report()
    assert report["shared_bytes"] == report["base_bytes"]


def test_the_managers_pipelines_know_their_device_without_walking_their_modules(manager, tiny_controlnet_dir,
                                                                                 monkeypatch):
    """diffusers searches every submodule for offload hooks each time a pipeline's execution
    device is read (~7.5 ms on SD 1.5, twice per image, before the first step). The manager's
    pipelines answer what that search answers, without searching."""
    from diffusers import StableDiffusionPipeline

    from pipelines.execution_device import _SEARCH

    controlnet = manager.controlnets.get(str(tiny_controlnet_dir), manager.pipeline("txt2img").unet, manager.device,
                                         manager.dtype, allow_download=False)
    pipes = [manager.pipeline("txt2img"), manager.pipeline("img2img"), manager.pipeline("controlnet", controlnet=controlnet)]
    walks = []
    modules = torch.nn.Module.modules
    monkeypatch.setattr(torch.nn.Module, "modules", lambda self: walks.append(self) or modules(self))
    assert [pipe._execution_device for pipe in pipes] == [torch.device("cpu")] * 3
    assert walks == []
    assert [_SEARCH(pipe) for pipe in pipes] == [torch.device("cpu")] * 3 and walks  # diffusers' own search agrees
    other = StableDiffusionPipeline(**manager.pipeline("txt2img").components)  # not the manager's: searched as before
    walks.clear()
    assert other._execution_device == torch.device("cpu") and walks


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels", [3, 1])
def test_decoded_pixels_become_the_same_pil_images_as_diffusers_postprocess_gives(dtype, channels):
    from diffusers.image_processor import VaeImageProcessor

    from pipelines.generation import quantize, to_pil, uint8_to_pil

    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, channels, 24, 40, generator=generator) * 2.6 - 1.3  # some beyond [-1, 1]
    halves = (torch.arange(256, dtype=torch.float32) + 0.5) / 255 * 2 - 1  # the rounding boundaries
    pixels.view(-1)[:256] = halves
    pixels = pixels.to(dtype)
    processor = VaeImageProcessor(vae_scale_factor=8)
    theirs = processor.postprocess(pixels, output_type="pil")
    # quantize() is what runs on a GPU (there: IEEE float32 ×255 and round-half-even, as numpy's)
    for ours in (uint8_to_pil(quantize(processor, pixels).numpy()), to_pil(processor, pixels)):
        assert [image.mode for image in ours] == [image.mode for image in theirs]
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(ours, theirs))
