"""Hires fix and variation seeds on the manager with the tiny model (real pipelines), plus
the maths they rest on (slerp, seed resize) and the infotext they write."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.core.jobs import Job
from pipelines.core.metadata import infotext_to_fields, parse_infotext
from pipelines.noise import NoiseSpec, paste_centred, slerp
from pipelines.core.errors import RequestError
from pipelines.core.requests import (Control, ControlUnit, Img2ImgRequest, InpaintRequest, Limits, Sampling,
                                Txt2ImgRequest)
from pipelines.core.schedulers import SCHEDULER_NAMES
from tiny_sd import save_tiny_inpaint_unet

SIZE = 64


VARIATION = ("subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h")  # request fields


def split(sampling: dict) -> tuple[dict, dict]:
    """(Sampling's values, the variation seed's): the tests write them together."""
    return ({k: v for k, v in sampling.items() if k not in VARIATION}, {k: v for k, v in sampling.items() if k in VARIATION})


def txt2img(sampling=None, **fields) -> Txt2ImgRequest:
    sampling, variation = split(sampling or {})
    fields = {**variation, **fields}
    sampling = Sampling(**{"steps": 4, "seed": 3, "scheduler": "Euler", **sampling})
    return Limits().normalize(Txt2ImgRequest(prompt="a red circle", width=SIZE, height=SIZE, sampling=sampling, **fields))


def pixels(result, index=0) -> np.ndarray:
    return np.asarray(result.images[index].image)


# ----------------------------------------------------------------- slerp and seed resize
def test_slerp_ends_are_the_inputs_bit_for_bit():
    a, b = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    assert slerp(0.0, a, b) is a and slerp(1.0, a, b) is b


def test_slerp_keeps_the_noise_norm_where_a_linear_mix_shrinks_it():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 64, 64, generator=g), torch.randn(4, 64, 64, generator=g)
    b = b * (a.norm() / b.norm())  # equal norms: the middle is then equally far from both
    middle = slerp(0.5, a, b)
    assert abs(middle.norm() / a.norm() - 1) < 0.02
    assert abs((0.5 * a + 0.5 * b).norm() / a.norm() - 0.5 ** 0.5) < 0.02
    # the angle is split evenly: equal angles to both ends
    cos = lambda x, y: float((x.flatten() @ y.flatten()) / (x.norm() * y.norm()))  # noqa: E731
    assert abs(cos(middle, a) - cos(middle, b)) < 1e-4


def test_slerp_of_parallel_vectors_falls_back_to_a_linear_mix():
    a = torch.randn(2, 3)
    assert torch.allclose(slerp(0.3, a, 2 * a), 0.7 * a + 0.6 * a)


def test_seed_resize_pastes_the_old_noise_centred():
    small, big = torch.ones(1, 4, 4, 4), torch.zeros(1, 4, 8, 6)
    out = paste_centred(small, big)
    assert out[0, 0, 2:6, 1:5].eq(1).all() and out.sum() == small.sum()
    cropped = paste_centred(torch.arange(64.0).reshape(1, 1, 8, 8), torch.zeros(1, 1, 4, 4))
    assert torch.equal(cropped[0, 0], torch.arange(64.0).reshape(8, 8)[2:6, 2:6])


def test_noise_spec_without_a_variation_is_the_identity():
    noise = torch.randn(2, 4, 8, 8)
    assert NoiseSpec((1, 2), (5, 6), 0.0).vary(noise) is noise


def test_ancestral_samplers_draw_the_same_step_noise_from_the_same_generators():
    """Euler a (the default) draws each step's noise through without_host_sync's randn: the
    very draws diffusers makes, image by image from each image's CPU generator (on a GPU they
    then cross from pinned memory instead of with a sync)."""
    import sys

    from diffusers import EulerAncestralDiscreteScheduler
    from diffusers.utils.torch_utils import randn_tensor

    from pipelines.noise import _step_noise, without_host_sync

    scheduler = without_host_sync(EulerAncestralDiscreteScheduler())
    assert sys.modules[type(scheduler).__module__].randn_tensor is _step_noise
    for generators in ([torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)], torch.Generator().manual_seed(3)):
        twins = ([torch.Generator().manual_seed(g.initial_seed()) for g in generators] if isinstance(generators, list)
                 else torch.Generator().manual_seed(generators.initial_seed()))
        for _ in range(2):  # the generators advance alike, step after step
            ours = _step_noise((2, 4, 8, 8), generator=generators, device=torch.device("cpu"), dtype=torch.float16)
            theirs = randn_tensor((2, 4, 8, 8), generator=twins, device=torch.device("cpu"), dtype=torch.float16)
            assert ours.dtype == torch.float16 and torch.equal(ours, theirs)


# ----------------------------------------------------------------- variation seed, every task
def test_variation_strength_0_is_the_plain_image_and_1_the_variation_seeds(manager):
    plain = pixels(manager.run(txt2img()))
    assert np.array_equal(plain, pixels(manager.run(txt2img({"subseed": 9, "subseed_strength": 0.0}))))
    assert np.array_equal(pixels(manager.run(txt2img({"seed": 9}))),
                          pixels(manager.run(txt2img({"subseed": 9, "subseed_strength": 1.0}))))


def test_variation_of_a_batch_follows_the_seeds_image_by_image(manager):
    batch = manager.run(txt2img({"batch_size": 2, "subseed": 9, "subseed_strength": 0.3}))
    alone = manager.run(txt2img({"seed": 4, "subseed": 10, "subseed_strength": 0.3}))
    assert np.abs(pixels(batch, 1).astype(int) - pixels(alone)).max() <= 1  # batched matmuls may round apart
    assert "Seed: 4, Size: 64x64, Model: tiny-sd, Variation seed: 10, Variation seed strength: 0.3" in batch.images[1].infotext


@pytest.mark.parametrize("task", ["img2img", "repaint"])
def test_variation_seed_acts_on_img2img_and_inpainting_and_strength_0_changes_nothing(manager, task):
    init = Image.fromarray(np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (16, 16, 48, 48))

    def run(**sampling):
        sampling, variation = split(sampling)
        s = Sampling(**{"steps": 6, "seed": 3, "scheduler": "DDIM", **sampling})
        common = dict(prompt="x", width=SIZE, height=SIZE, init_image=init, sampling=s, **variation)
        request = (Img2ImgRequest(strength=0.6, **common) if task == "img2img" else InpaintRequest(mask=mask, **common))
        return pixels(manager.run(Limits().normalize(request)))

    plain = run()
    assert np.array_equal(plain, run(subseed=8, subseed_strength=0.0))
    assert not np.array_equal(plain, run(subseed=8, subseed_strength=0.5))


def test_variation_with_the_inpainting_model_from_pure_noise(tiny_model_dir, tmp_path):
    from pipelines.manager import PipelineManager

    m = PipelineManager(device="cpu")
    m.load_base(str(tiny_model_dir))
    unet_dir = save_tiny_inpaint_unet(tmp_path / "tiny-inpaint")
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (16, 16, 48, 48))

    def run(**sampling):
        sampling, variation = split(sampling)
        request = InpaintRequest(prompt="x", width=SIZE, height=SIZE, init_image=Image.new("RGB", (SIZE, SIZE), "gray"),
                                 mask=mask, mode="inpainting model", inpaint_model=str(unet_dir),
                                 sampling=Sampling(**{"steps": 4, "seed": 3, "scheduler": "Euler", **sampling}), **variation)
        return m.run(Limits().normalize(request))

    plain = run()
    assert np.array_equal(pixels(plain), pixels(run(subseed=8, subseed_strength=0.0)))
    assert not np.array_equal(pixels(plain), pixels(run(subseed=8, subseed_strength=0.5)))
    # the infotext names the model as A1111 does (its folder name), never this machine's path
    assert "Inpainting model: tiny-inpaint," in plain.images[0].infotext and str(tmp_path) not in plain.images[0].infotext


def test_repaint_records_the_update_it_ran_not_the_scheduler_dropdown(manager):
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (16, 16, 48, 48))
    request = Limits().normalize(InpaintRequest(prompt="x", width=SIZE, height=SIZE, init_image=Image.new("RGB", (SIZE, SIZE)),
                                                mask=mask, sampling=Sampling(steps=3, seed=1, eta=0.5)))
    params = parse_infotext(manager.run(request).images[0].infotext)
    assert params["Sampler"] == "DDIM" and params["Eta"] == "0.5"


# ----------------------------------------------------------------- hires fix
def hires(**fields):
    return txt2img(**{"enable_hr": True, "hr_second_pass_steps": 4, "denoising_strength": 0.5, **fields})


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (bicubic antialiased)", "Latent (nearest-exact)", "Lanczos", "Nearest"])
def test_hires_fix_makes_the_final_size_with_every_upscaler(manager, upscaler):
    result = manager.run(hires(hr_upscaler=upscaler, hr_scale=1.5))
    assert result.images[0].image.size == (96, 96)
    assert f"Hires upscaler: {upscaler}" in result.images[0].infotext


def test_hires_resize_to_another_aspect_covers_and_crops(manager):
    assert manager.run(hires(hr_resize_x=128, hr_resize_y=64)).images[0].image.size == (128, 64)
    assert manager.run(hires(hr_resize_y=96)).images[0].image.size == (96, 96)


def test_hires_progress_runs_over_both_passes(manager):
    seen = []
    manager.run(hires(hr_second_pass_steps=6), on_step=seen.append)  # 4 + int(6 × 0.5) = 7 steps
    assert [(e.step, e.total) for e in seen] == [(i, 7) for i in range(1, 8)]
    assert seen[-1].fraction == 1.0


def test_hires_with_strength_0_returns_the_upscaled_first_pass(manager):
    assert manager.run(hires(denoising_strength=0.0, hr_scale=2)).images[0].image.size == (128, 128)


@pytest.mark.parametrize("stop_at, size", [(2, (SIZE, SIZE)), (6, (128, 128))])
def test_interrupting_either_pass_keeps_the_image_so_far(manager, stop_at, size):
    job, seen = Job(), []

    def on_step(event):
        seen.append(event.step)
        if event.step == stop_at:
            job.cancel()

    result = manager.run(hires(hr_scale=2), on_step=on_step, job=job)
    assert result.interrupted and seen[-1] == stop_at and result.images[0].image.size == size


def test_hires_with_controlnet_and_a_batch(manager, tiny_controlnet_dir):
    edges = Image.fromarray((np.indices((SIZE, SIZE)).sum(0) // 16 % 2 * 255).astype(np.uint8)).convert("RGB")
    control = Control(units=(ControlUnit(model=str(tiny_controlnet_dir), image=edges),))
    result = manager.run(hires(control=control, sampling={"batch_size": 2}))
    assert [image.image.size for image in result.images] == [(128, 128)] * 2
    assert "ControlNet 0" in result.images[0].infotext and "Hires upscale: 2" in result.images[0].infotext
    alone = manager.run(hires(control=control, sampling={"seed": 4}))
    # image k is its own seed's in a batch too (batched matmuls may round differently: one grey level)
    assert np.abs(pixels(result, 1).astype(int) - pixels(alone)).max() <= 1


def test_hires_fix_is_refused_outside_txt2img_and_upscalers_are_names_not_paths(manager):
    with pytest.raises(RequestError, match="Hires fix is a txt2img option"):
        Img2ImgRequest(init_image=Image.new("RGB", (8, 8)), enable_hr=True)
    for path in ("../../etc/passwd", "/tmp/x.pth", "", ".."):
        with pytest.raises(RequestError, match="Unknown hires upscaler"):
            Txt2ImgRequest(enable_hr=True, hr_upscaler=path)
    with pytest.raises(RequestError, match="'R-ESRGAN 4x\\+' is not on this host. Choose one of: Latent"):
        manager.run(hires(hr_upscaler="R-ESRGAN 4x+"))


@pytest.fixture(scope="module")
def upscaler_dir(tmp_path_factory):
    """A tiny ×2 ESRGAN (random weights) saved as a .safetensors, as one from A1111's models/ESRGAN."""
    from safetensors.torch import save_file
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ESRGAN")
    save_file(ESRGAN(num_filters=8, num_blocks=1, scale=2).state_dict(), str(folder / "tiny-esrgan-x2.safetensors"))
    (folder / "notes.txt").write_text("not a model")
    return folder


def test_a_model_upscaler_on_disk_is_offered_and_used_by_name(tiny_model_dir, upscaler_dir):
    from pipelines.core.catalog import upscaler_models
    from pipelines.manager import PipelineManager

    assert list(upscaler_models(upscaler_dir)) == ["tiny-esrgan-x2"] and upscaler_models("/no/such/dir") == {}
    m = PipelineManager(device="cpu", upscaler_dir=str(upscaler_dir))
    m.load_base(str(tiny_model_dir))
    result = m.run(hires(hr_upscaler="tiny-esrgan-x2", hr_scale=3))  # ×2 twice, then Lanczos to 192
    assert result.images[0].image.size == (192, 192)
    assert "Hires upscaler: tiny-esrgan-x2," in result.images[0].infotext
    assert m._upscalers._loaded[0].name == "tiny-esrgan-x2.safetensors"  # the model ran, not a fallback


def test_png_info_turns_hires_and_variation_keys_back_into_fields(manager):
    result = manager.run(hires(sampling={"subseed": 7, "subseed_strength": 0.25, "seed_resize_from_w": 32,
                                         "seed_resize_from_h": 48}, hr_resize_x=96))
    fields, notes = infotext_to_fields(parse_infotext(result.images[0].infotext), SCHEDULER_NAMES)
    assert not notes
    assert {k: fields[k] for k in ("enable_hr", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y",
                                   "denoising_strength", "subseed", "subseed_strength", "seed_resize_from_w",
                                   "seed_resize_from_h")} == {
        "enable_hr": True, "hr_upscaler": "Latent", "hr_second_pass_steps": 4, "hr_resize_x": 96, "hr_resize_y": 0,
        "denoising_strength": 0.5, "subseed": 7, "subseed_strength": 0.25, "seed_resize_from_w": 32, "seed_resize_from_h": 48}
    # the same fields rebuild a request that makes the same image
    again = replace(hires(hr_resize_x=96), subseed=7, subseed_strength=0.25, seed_resize_from_w=32, seed_resize_from_h=48)
    assert np.array_equal(pixels(result), pixels(manager.run(again)))


def test_xy_grid_varies_variation_strength_and_the_hires_pass(manager):
    from pipelines.core.grid import axis_values, plan_grid

    plan = plan_grid(hires(sampling={"subseed": 9}), axis_values("Variation strength", "0, 1"), axis_values("Hires steps", "2, 4"))
    assert [(c.subseed_strength, c.hr_second_pass_steps) for c in plan.cells] == [(0, 2), (1, 2), (0, 4), (1, 4)]
    strength = plan_grid(hires(), axis_values("Hires denoising strength", "0.3, 0.6"), None)
    assert [c.denoising_strength for c in strength.cells] == [0.3, 0.6]
    with pytest.raises(RequestError, match="need txt2img with Hires fix on"):
        plan_grid(txt2img(), axis_values("Hires steps", "2"), None)
    images = [pixels(manager.run(cell)) for cell in plan.cells[:2]]
    assert not np.array_equal(*images)  # the variation acts in a grid cell
