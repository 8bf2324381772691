"""SDXL under the same manager and request objects as SD 1.x (families.py): a tiny random SDXL
built in code (tests/tiny_sdxl.py), as a diffusers folder and as one LDM single file, in
every mode; switching families leaves nothing of the other in memory."""
from __future__ import annotations

import dataclasses
import gc
import weakref

import numpy as np
import pytest
import torch

from pipelines.core.errors import ModelLoadError, RequestError
from pipelines.families import SD, SDXL, family_of_single_file, single_file_config
from pipelines.manager import PipelineManager
from pipelines.core.requests import Control, ControlUnit, Img2ImgRequest, InpaintRequest, Limits, Sampling, Txt2ImgRequest

LIMITS = Limits()


def ready(request):
    return LIMITS.normalize(request)


def t2i(**kw):
    kw.setdefault("sampling", Sampling(steps=3, seed=7))
    return ready(Txt2ImgRequest(prompt=kw.pop("prompt", "a red circle"), width=kw.pop("width", 64), height=kw.pop("height", 64), **kw))


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image, dtype=np.int16)


@pytest.fixture(scope="module")
def xl_dir(tmp_path_factory):
    from tiny_sdxl import save_tiny_xl_model

    return save_tiny_xl_model(tmp_path_factory.mktemp("xl") / "tiny-sdxl")


@pytest.fixture(scope="module")
def xl(xl_dir):
    m = PipelineManager(device="cpu")
    m.load_base(str(xl_dir))
    return m


def test_an_sdxl_folder_loads_as_sdxl_and_every_mode_shares_its_modules(xl):
    assert xl.family is SDXL and xl.model.family == "SDXL" and "SDXL" in xl.describe()
    assert xl.native_size == xl._base.unet.config.sample_size * 8
    base = xl.pipeline("txt2img")
    for task in ("img2img", "inpaint"):
        derived = xl.pipeline(task)
        assert type(derived) is SDXL.pipelines[task]
        for name in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer_2"):
            assert getattr(derived, name) is getattr(base, name)
    report = xl.memory_report()
    assert report["shared_bytes"] == report["base_bytes"] == xl.model.weight_bytes


def test_sdxl_txt2img_returns_the_requested_size(xl):
    result = xl.run(t2i(width=64, height=96))
    assert result.images[0].image.size == (64, 96)


def test_sdxl_size_conditioning_from_the_request_reaches_the_unet(xl):
    plain = pixels(xl.run(t2i()))
    assert np.array_equal(plain, pixels(xl.run(t2i(original_width=64, original_height=64))))  # 0 = the size
    assert not np.array_equal(plain, pixels(xl.run(t2i(original_width=16, original_height=16))))
    assert not np.array_equal(plain, pixels(xl.run(t2i(crop_top=32, crop_left=8))))


def test_sdxl_img2img_returns_the_requested_size(xl, scene):
    init, _ = scene
    result = xl.run(ready(Img2ImgRequest(prompt="x", width=64, height=64, init_image=init, strength=0.6,
                                         sampling=Sampling(steps=4, seed=1))))
    assert result.images[0].image.size == (64, 64)


def test_sdxl_repaint_inpaint_keeps_the_unmasked_pixels(xl, scene):
    init, mask = scene
    result = xl.run(ready(InpaintRequest(prompt="x", width=64, height=64, init_image=init, mask=mask, mask_blur=0,
                                         repaint_r=2, sampling=Sampling(steps=3, seed=1))))
    out = np.asarray(result.images[0].image)
    assert out.shape == (64, 64, 3)
    assert np.array_equal(out[:8], np.asarray(init)[:8])  # outside the mask: pasted back as it was
    assert not np.array_equal(out[20:44, 20:44], np.asarray(init)[20:44, 20:44])


def test_sdxl_repaint_follows_the_size_conditioning(xl, scene):
    init, mask = scene

    def run(**kw):
        return pixels(xl.run(ready(InpaintRequest(prompt="x", width=64, height=64, init_image=init, mask=mask,
                                                  sampling=Sampling(steps=3, seed=1), **kw))))
    assert not np.array_equal(run(), run(original_width=16, original_height=16))


def test_sdxl_nine_channel_inpainting_model(xl, scene, tmp_path):
    from tiny_sdxl import save_tiny_xl_inpaint_model

    init, mask = scene
    folder = save_tiny_xl_inpaint_model(tmp_path / "xl-inpaint")
    result = xl.run(ready(InpaintRequest(prompt="x", width=64, height=64, init_image=init, mask=mask,
                                         mode="inpainting model", inpaint_model=str(folder),
                                         sampling=Sampling(steps=3, seed=1))))
    assert result.images[0].image.size == (64, 64)
    assert xl._inpaint_unet[1].config.in_channels == 9
    assert xl.pipeline("txt2img").unet.config.in_channels == 4  # the base UNet is untouched


def test_sdxl_controlnet_unit(xl, scene, tmp_path):
    from diffusers import ControlNetModel

    init, _ = scene
    folder = tmp_path / "xl-controlnet"
    ControlNetModel.from_unet(xl._base.unet).save_pretrained(folder)
    control = Control(units=(ControlUnit(model=str(folder), image=init),))
    result = xl.run(t2i(width=64, height=64, control=control))
    assert result.images[0].image.size == (64, 64)
    i2i = xl.run(ready(Img2ImgRequest(prompt="x", width=64, height=64, init_image=init, strength=0.6,
                                      control=control, sampling=Sampling(steps=4, seed=1))))
    assert i2i.images[0].image.size == (64, 64)


def test_an_sd_controlnet_on_sdxl_is_a_clear_error(xl, tiny_controlnet_dir, scene):
    from pipelines.core.errors import StudioError

    control = Control(units=(ControlUnit(model=str(tiny_controlnet_dir), image=scene[0]),))
    with pytest.raises(StudioError, match="another base architecture"):
        xl.run(t2i(control=control))


def test_sdxl_refiner_hand_off(xl, tmp_path):
    from tiny_sdxl import save_tiny_xl_refiner

    folder = save_tiny_xl_refiner(tmp_path / "xl-refiner")
    plain = xl.run(t2i(sampling=Sampling(steps=4, seed=3)))
    refined = xl.run(t2i(sampling=Sampling(steps=4, seed=3), refiner=str(folder), refiner_switch=0.5))
    assert refined.images[0].image.size == (64, 64)
    assert "Refiner: xl-refiner" in refined.images[0].infotext
    assert not np.array_equal(pixels(plain), pixels(refined))
    assert xl._refiner[1].vae is xl._base.vae  # one VAE for both
    assert xl.memory_report()["extra_bytes"] > 0


def test_sdxl_hires_fix_makes_the_final_size_with_each_pass_conditioned_on_its_own(xl):
    result = xl.run(t2i(sampling=Sampling(steps=2, seed=3), enable_hr=True, hr_scale=2, denoising_strength=0.5))
    assert result.images[0].image.size == (128, 128)
    assert "Hires upscale: 2" in result.images[0].infotext


def test_hires_fix_with_the_sdxl_refiner_is_refused_with_a_sentence(xl, tmp_path):
    from tiny_sdxl import save_tiny_xl_refiner

    folder = save_tiny_xl_refiner(tmp_path / "xl-refiner")
    with pytest.raises(RequestError, match="hires fix and the SDXL refiner cannot be used together"):
        xl.run(t2i(sampling=Sampling(steps=2, seed=3), refiner=str(folder), enable_hr=True))


def test_an_sdxl_single_file_loads_with_the_same_weights(xl, xl_dir, tmp_path):
    from ldm_checkpoint_xl import save_xl_single_file

    path = save_xl_single_file(xl._base, tmp_path / "tiny-sdxl.safetensors", dtype=None)
    assert family_of_single_file(path) is SDXL
    # The tiny architecture's configs come from its folder (as --single-file-config does).
    m = PipelineManager(device="cpu", single_file_config=str(xl_dir))
    m.load_base(str(path))
    assert m.family is SDXL and m.model.source.kind == "single_file"
    for name in ("unet", "text_encoder", "text_encoder_2", "vae"):
        theirs = getattr(xl._base, name).state_dict()
        for key, value in getattr(m._base, name).state_dict().items():
            assert torch.equal(value, theirs[key]), f"{name}.{key}"
    assert m.run(t2i(width=64, height=80)).images[0].image.size == (64, 80)


def test_a_single_file_gets_the_config_of_its_own_family():
    sd15 = str(SD.config_dir)
    assert single_file_config(SDXL, sd15) == str(SDXL.config_dir)  # the SD default is not used for SDXL
    assert single_file_config(SD, sd15) == sd15
    assert single_file_config(SDXL, None) == str(SDXL.config_dir)


def test_switching_sd_sdxl_sd_leaves_nothing_of_the_other_family(tiny_model_dir, xl_dir):
    m = PipelineManager(device="cpu")

    def load(path):
        m.load_base(str(path))
        m.pipeline("img2img")
        assert m.run(t2i()).images[0].image.size == (64, 64)
        modules = [v for v in m._base.components.values() if isinstance(v, torch.nn.Module)]
        refs = [weakref.ref(v) for v in modules]
        params = sum(p.numel() for v in modules for p in v.parameters())
        return refs, params

    sd_refs, sd_params = load(tiny_model_dir)
    assert m.family is SD
    xl_refs, xl_params = load(xl_dir)
    gc.collect()
    assert m.family is SDXL and all(ref() is None for ref in sd_refs)
    assert m._base.text_encoder_2 is not None
    sd_refs_again, sd_params_again = load(tiny_model_dir)
    gc.collect()
    assert m.family is SD and all(ref() is None for ref in xl_refs)
    assert not hasattr(m._base, "text_encoder_2") and sd_params_again == sd_params != xl_params
    held = {id(mod) for p in m._pipelines.values() for mod in p.components.values() if isinstance(mod, torch.nn.Module)}
    assert held == {id(ref()) for ref in sd_refs_again}


def test_a_refiner_single_file_as_base_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "refiner.safetensors"
    save_file({"conditioner.embedders.0.model.ln_final.weight": torch.ones(2)}, str(path))
    with pytest.raises(ModelLoadError, match="refiner"):
        PipelineManager(device="cpu").load_base(str(path))


def test_the_lab_trajectory_on_sdxl_is_the_apps_own_ddim(xl):
    from pipelines.core.lab_requests import LabCfgRequest, LabTrajectoryRequest

    size = xl.native_size
    result = xl.run(LabTrajectoryRequest("a red circle", steps=4, every=2, cfg_scale=5.0, seed=11))
    request = ready(Txt2ImgRequest(prompt="a red circle", width=size, height=size,
                                   sampling=Sampling(scheduler="DDIM", steps=4, cfg_scale=5.0, seed=11)))
    app_image = np.asarray(xl.run(request).images[0].image, dtype=np.int16)
    assert np.abs(np.asarray(result.runs[0.0][-1].x_t, dtype=np.int16) - app_image).max() <= 1
    anatomy = xl.run(LabCfgRequest("a blue square", steps=4, step=2, scale=5.0, seed=4, scales=(1.0, 3.0)))
    assert not torch.equal(anatomy.eps["cond"], anatomy.eps["uncond"])


def test_sdxl_controlnet_with_inpainting(xl, scene, tmp_path):
    from diffusers import ControlNetModel

    init, mask = scene
    folder = tmp_path / "xl-controlnet"
    ControlNetModel.from_unet(xl._base.unet).save_pretrained(folder)
    control = Control(units=(ControlUnit(model=str(folder), image=init),))
    result = xl.run(ready(InpaintRequest(prompt="x", width=64, height=64, init_image=init, mask=mask, control=control,
                                         sampling=Sampling(steps=3, seed=1))))
    assert result.images[0].image.size == (64, 64)
    assert type(xl._pipelines["controlnet-inpaint"]).__name__ == "StableDiffusionXLControlNetInpaintPipeline"


def test_sdxl_prompts_go_through_both_encoders_with_a1111_syntax(xl):
    from pipelines.prompt_encoding import encode_prompts

    pipe, cpu = xl._base, torch.device("cpu")
    ours = encode_prompts(pipe, "a red circle", "blurry", 1, True, cpu)
    theirs = pipe.encode_prompt("a red circle", device=cpu, num_images_per_prompt=1, do_classifier_free_guidance=True,
                                negative_prompt="blurry")
    # A short plain prompt: exactly diffusers' SDXL encoding (penultimate layers concatenated, pooled bigG).
    for mine, reference in zip((ours.cond, ours.uncond, ours.pooled, ours.uncond_pooled), theirs):
        assert torch.equal(mine, reference)
    long = encode_prompts(pipe, " ".join(["red circle"] * 60), "", 1, True, cpu)
    assert long.cond.shape[1] == 2 * 77 and long.uncond.shape == long.cond.shape  # chunked, nothing cut
    assert long.cond.shape[2] == pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    emphasised = encode_prompts(pipe, "a (red:1.5) circle", "", 1, False, cpu)
    assert not torch.equal(emphasised.cond, encode_prompts(pipe, "a red circle", "", 1, False, cpu).cond)
    assert xl.run(t2i(prompt=" ".join(["red circle"] * 60))).images[0].image.size == (64, 64)
def test_an_sdxl_nine_channel_single_file(xl_dir, scene, tmp_path):
    """An SDXL inpainting checkpoint as one file (UNet keys only): built from the SDXL UNet
    config with 9 input channels."""
    from ldm_checkpoint_xl import xl_unet_to_ldm
    from safetensors.torch import save_file
    from tiny_sdxl import tiny_xl_unet

    unet = tiny_xl_unet(in_channels=9, seed=3)
    path = tmp_path / "xl-inpainting.safetensors"
    save_file({k: v.contiguous() for k, v in xl_unet_to_ldm(unet).items()}, str(path))
    m = PipelineManager(device="cpu", single_file_config=str(xl_dir))
    m.load_base(str(xl_dir))
    init, mask = scene
    result = m.run(ready(InpaintRequest(prompt="x", width=64, height=64, init_image=init, mask=mask,
                                        mode="inpainting model", inpaint_model=str(path),
                                        sampling=Sampling(steps=3, seed=1))))
    assert result.images[0].image.size == (64, 64)
    loaded = m._inpaint_unet[1].state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in unet.state_dict().items())


def test_the_refiner_switch_is_a_grid_axis_only_where_a_refiner_runs():
    from pipelines.core.grid import axis_values, plan_grid

    base = Txt2ImgRequest(prompt="x", width=64, height=64, sampling=Sampling(steps=4, seed=1))
    with pytest.raises(RequestError, match="needs txt2img with an SDXL refiner"):
        plan_grid(base, axis_values("Refiner switch at", "0.5, 0.8"), None)
    plan = plan_grid(dataclasses.replace(base, refiner="tiny-refiner"), axis_values("Refiner switch at", "0.5, 0.8"), None)
    assert [cell.refiner_switch for cell in plan.cells] == [0.5, 0.8]


def test_the_refiner_reads_the_prompt_with_a1111_syntax(xl, tmp_path):
    """The refiner's prompt goes through the same encoding as the base's: a LoRA tag and
    weight-1 emphasis are syntax, not words (diffusers' own encoding would read them as text)."""
    from tiny_sdxl import save_tiny_xl_refiner

    folder = save_tiny_xl_refiner(tmp_path / "xl-refiner")

    def refined(prompt):
        return pixels(xl.run(t2i(prompt=prompt, sampling=Sampling(steps=4, seed=3), refiner=str(folder), refiner_switch=0.5)))

    plain = refined("a red circle")
    assert np.array_equal(refined("a (red:1.0) circle <lora:not-loaded:0>"), plain)
    assert not np.array_equal(refined("a (red:1.6) circle"), plain)
