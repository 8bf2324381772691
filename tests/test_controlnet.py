"""ControlNet on the shared manager with tiny random ControlNets (diffusers ControlNetModel)."""
from __future__ import annotations

import numpy as np
import pytest
from diffusers import ControlNetModel
from PIL import Image

from pipelines.core.errors import ModelLoadError, RequestError
from pipelines.manager import PipelineManager
from pipelines.core.requests import Control, ControlUnit, Img2ImgRequest, Limits, Sampling, Txt2ImgRequest
from tiny_sd import save_tiny_controlnet

SIZE = 64


def edge_map() -> Image.Image:
    array = np.zeros((SIZE, SIZE, 3), np.uint8)
    array[16:48, 16] = array[16:48, 47] = array[16, 16:48] = array[47, 16:48] = 255
    return Image.fromarray(array)


def unit(model, weight=1.0, start=0.0, end=1.0, image=None, preprocessor="none", params=()) -> ControlUnit:
    return ControlUnit(model=str(model), image=image or edge_map(), preprocessor=preprocessor, params=params,
                       weight=weight, start=start, end=end)


def request(*units, seed=4, guess_mode=False, steps=5) -> Txt2ImgRequest:
    control = Control(units=tuple(units), guess_mode=guess_mode) if units else None
    return Limits().normalize(Txt2ImgRequest(prompt="a red square", width=SIZE, height=SIZE, control=control,
                                             sampling=Sampling(steps=steps, seed=seed, scheduler="Euler")))


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image, dtype=np.int16)


@pytest.fixture(scope="module")
def zero_controlnet(tmp_path_factory, manager):
    """A freshly initialised ControlNet: a copy of the base encoder joined by zero convolutions."""
    return save_tiny_controlnet(tmp_path_factory.mktemp("cn") / "zero", manager.pipeline("txt2img").unet, trained=False)


@pytest.fixture(scope="module")
def trained_controlnet(tmp_path_factory, manager):
    """The same with non-zero output convolutions, as after training."""
    return save_tiny_controlnet(tmp_path_factory.mktemp("cn") / "trained", manager.pipeline("txt2img").unet)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_control_maps_reach_the_pipeline_as_its_own_processor_makes_them(manager, mode):
    """The manager hands maps over as tensors made on the device (no float32 array and sync
    on the host): the pipeline's control image processor must get, bit for bit, what it
    makes itself from the PIL map."""
    import torch

    from pipelines.control import maps_on_device

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).convert(mode)
    processor = manager.pipeline("controlnet", controlnet=None).control_image_processor
    own = processor.preprocess(image, height=48, width=80)
    handed = processor.preprocess(maps_on_device([image], torch.device("cpu"))[0], height=48, width=80)
    assert own.shape == handed.shape == (1, 3, 48, 80) and torch.equal(own, handed)


def test_a_fresh_controlnet_leaves_the_output_identical_zero_convolutions(manager, zero_controlnet):
    assert np.array_equal(pixels(manager.run(request(unit(zero_controlnet)))), pixels(manager.run(request())))


def test_conditioning_scale_zero_leaves_the_output_identical(manager, trained_controlnet):
    assert np.array_equal(pixels(manager.run(request(unit(trained_controlnet, weight=0.0)))), pixels(manager.run(request())))


def test_a_trained_control_changes_the_output_and_more_weight_changes_it_more(manager, trained_controlnet):
    base = pixels(manager.run(request()))
    weak = pixels(manager.run(request(unit(trained_controlnet, weight=0.3))))
    strong = pixels(manager.run(request(unit(trained_controlnet, weight=1.5))))
    assert 0 < np.abs(weak - base).mean() < np.abs(strong - base).mean()


def test_guidance_window_outside_the_steps_acts_like_no_controlnet(manager, trained_controlnet):
    # With 5 steps, a window starting at 0.99 contains no step: the ControlNet never acts.
    assert np.array_equal(pixels(manager.run(request(unit(trained_controlnet, start=0.99, end=1.0)))), pixels(manager.run(request())))


def test_two_units_run_together_and_are_recorded(manager, trained_controlnet, zero_controlnet):
    result = manager.run(request(unit(trained_controlnet, weight=0.8), unit(zero_controlnet, weight=1.0, start=0.2, end=0.9)))
    assert not np.array_equal(pixels(result), pixels(manager.run(request())))
    infotext = result.images[0].infotext
    assert f'ControlNet 0: "Module: none, Model: {trained_controlnet.name}, Weight: 0.8' in infotext
    assert "Guidance Start: 0.2, Guidance End: 0.9" in infotext


def test_controlnet_with_img2img_uses_strength(manager, trained_controlnet):
    init = Image.new("RGB", (SIZE, SIZE), (200, 30, 30))
    base = Limits().normalize(Img2ImgRequest(prompt="x", width=SIZE, height=SIZE, init_image=init, strength=0.6,
                                             sampling=Sampling(steps=10, seed=2, scheduler="Euler")))
    with_control = Limits().normalize(Img2ImgRequest(prompt="x", width=SIZE, height=SIZE, init_image=init, strength=0.6,
                                                     control=Control(units=(unit(trained_controlnet),)),
                                                     sampling=Sampling(steps=10, seed=2, scheduler="Euler")))
    a, b = manager.run(base), manager.run(with_control)
    assert not np.array_equal(pixels(a), pixels(b))
    assert "Denoising strength: 0.6" in b.images[0].infotext


def test_controlnets_share_the_base_modules_and_are_cached_with_a_cap(tiny_model_dir, zero_controlnet, trained_controlnet, tmp_path):
    m = PipelineManager(device="cpu", max_controlnets=1)
    m.load_base(str(tiny_model_dir))
    m.run(request(unit(zero_controlnet)))
    pipe = m.pipeline("controlnet", controlnet=m.controlnets.loaded()[0])
    assert pipe.unet is m.pipeline("txt2img").unet and pipe.vae is m.pipeline("txt2img").vae
    report = m.memory_report()
    controlnet_bytes = sum(p.numel() * p.element_size() for p in m.controlnets.loaded()[0].parameters())
    assert report["extra_bytes"] == controlnet_bytes and report["shared_bytes"] == report["base_bytes"]
    assert report["all_modes_bytes"] == report["base_bytes"] + report["extra_bytes"]
    m.run(request(unit(trained_controlnet)))
    assert len(m.controlnets.loaded()) == 1  # the cap evicted the least recently used


def test_a_controlnet_for_another_architecture_is_a_clear_error(manager, tmp_path):
    wrong = ControlNetModel(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=64, attention_head_dim=8,
                            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), norm_num_groups=32)
    wrong.save_pretrained(tmp_path / "wrong")
    with pytest.raises(ModelLoadError, match="another base architecture.*cross_attention_dim 64 vs the base model's 32"):
        manager.run(request(unit(tmp_path / "wrong")))
    assert len(manager.run(request()).images) == 1  # still serving


def test_bad_control_units_get_clear_messages(zero_controlnet):
    with pytest.raises(RequestError, match="Guidance start .* must come before guidance end"):
        unit(zero_controlnet, start=0.8, end=0.2)
    with pytest.raises(RequestError, match="needs a control image"):
        ControlUnit(model=str(zero_controlnet), image=None)
    with pytest.raises(RequestError, match="Choose a ControlNet model"):
        ControlUnit(model="", image=edge_map())
    with pytest.raises(RequestError, match="1 to 3 ControlNet units"):
        Control(units=tuple(unit(zero_controlnet) for _ in range(4)))
    with pytest.raises(RequestError, match="Control weight"):
        unit(zero_controlnet, weight=float("nan"))


def test_missing_controlnet_path_is_a_clear_error(manager):
    with pytest.raises(ModelLoadError, match="does not exist"):
        manager.run(request(unit("/no/such/controlnet")))


def test_canny_preprocessor_runs_inside_the_request(manager, trained_controlnet):
    photo = Image.fromarray(np.kron(np.eye(4)[:, :, None] * 255, np.ones((16, 16, 3))).astype(np.uint8))
    result = manager.run(request(unit(trained_controlnet, image=photo, preprocessor="canny", params=(("low", 50), ("high", 150)))))
    assert "Module: canny" in result.images[0].infotext and "low: 50, high: 150" in result.images[0].infotext
