"""Inpainting through the manager: RePaint on any model, the 9-channel model, ControlNet
inpainting, paste-back, and the edge cases of masks."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines import masks
from pipelines.core.errors import ModelLoadError, RequestError
from pipelines.core.jobs import Job
from pipelines.manager import PipelineManager
from pipelines.core.requests import Control, ControlUnit, InpaintRequest, Limits, Sampling
from tiny_sd import save_tiny_inpaint_unet

SIZE = 64


def photo(mode="RGB") -> Image.Image:
    array = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    return Image.fromarray(array).convert(mode)


def box_mask(box=(16, 16, 40, 40), size=(SIZE, SIZE)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def inpaint(image=None, mask=None, **fields) -> InpaintRequest:
    sampling = Sampling(**{"steps": 6, "seed": 3, "scheduler": "DDIM", **fields.pop("sampling", {})})
    return Limits().normalize(InpaintRequest(prompt="a blue square", width=SIZE, height=SIZE,
                                             init_image=image or photo(), mask=mask or box_mask(),
                                             sampling=sampling, **fields))


def outside_unchanged(result, image, mask) -> bool:
    keep = np.asarray(mask.convert("L")) < 128
    return np.array_equal(np.asarray(result.images[0].image)[keep], np.asarray(image.convert("RGB"))[keep])


class UNetCalls:
    def __init__(self, unet):
        self.count = 0
        self.handle = unet.register_forward_pre_hook(lambda *a: setattr(self, "count", self.count + 1))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.fixture(scope="module")
def inpaint_unet_dir(tmp_path_factory):
    return save_tiny_inpaint_unet(tmp_path_factory.mktemp("inpaint") / "tiny-inpaint")


@pytest.mark.parametrize("blur", [0, 6])
def test_repaint_leaves_every_pixel_outside_the_mask_unchanged(manager, blur):
    image, mask = photo(), box_mask()
    result = manager.run(inpaint(image, mask, mask_blur=blur))
    assert outside_unchanged(result, image, mask)
    inside = np.asarray(mask) > 0
    assert not np.array_equal(np.asarray(result.images[0].image)[inside], np.asarray(image)[inside])
    assert f"Inpaint mode: RePaint, Mask blur: {blur}" in result.images[0].infotext


def test_repaint_resampling_costs_r_times_the_unet_calls(manager):
    counts = {}
    for r in (1, 3):
        with UNetCalls(manager.pipeline("txt2img").unet) as calls:
            manager.run(inpaint(repaint_r=r, repaint_j=2, sampling={"cfg": False}))
        counts[r] = calls.count
    assert counts == {1: 6, 3: 18}


def test_the_inpainting_model_mode_uses_a_9_channel_unet_and_shares_the_rest(tiny_model_dir, inpaint_unet_dir):
    m = PipelineManager(device="cpu")
    m.load_base(str(tiny_model_dir))
    image, mask = photo(), box_mask()
    result = m.run(inpaint(image, mask, mode="inpainting model", inpaint_model=str(inpaint_unet_dir),
                           sampling={"scheduler": "Euler"}))
    assert outside_unchanged(result, image, mask)
    pipe = m.pipeline("inpaint", unet=m.inpaint_unet(str(inpaint_unet_dir)))
    assert pipe.unet.config.in_channels == 9
    base = m.pipeline("txt2img")
    assert pipe.vae is base.vae and pipe.text_encoder is base.text_encoder and pipe.tokenizer is base.tokenizer
    report = m.memory_report()
    unet_bytes = sum(p.numel() * p.element_size() for p in pipe.unet.parameters())
    assert report["extra_bytes"] == unet_bytes  # only the 9-channel UNet is new
    assert "Inpaint mode: inpainting model" in result.images[0].infotext


def test_the_9_channel_pipeline_is_derived_once_and_serves_the_same_images(tiny_model_dir, inpaint_unet_dir):
    m = PipelineManager(device="cpu")
    m.load_base(str(tiny_model_dir))
    request = inpaint(mode="inpainting model", inpaint_model=str(inpaint_unet_dir), sampling={"scheduler": "Euler"})
    first = m.run(request)
    pipe = m.pipeline("inpaint", unet=m.inpaint_unet(str(inpaint_unet_dir)))
    second = m.run(request)
    assert m.pipeline("inpaint", unet=m.inpaint_unet(str(inpaint_unet_dir))) is pipe  # not derived again
    assert np.array_equal(np.asarray(first.images[0].image), np.asarray(second.images[0].image))
    plain = m.pipeline("inpaint")  # without the extra UNet: the base's, never the cached 9-channel one
    assert plain is not pipe and plain.unet is m.pipeline("txt2img").unet


@pytest.mark.parametrize("mode", ["RePaint", "inpainting model"])
def test_the_mask_feather_is_computed_after_the_steps_are_run_not_before_the_first(manager, inpaint_unet_dir,
                                                                                    monkeypatch, mode):
    # On a GPU the steps are queued graph launches: host work placed after them overlaps the
    # device's work, host work before the first step delays the whole request.
    events = []
    feather = masks.feather
    monkeypatch.setattr(masks, "feather", lambda *args: events.append("feather") or feather(*args))
    image, mask = photo(), box_mask()
    extra = {"inpaint_model": str(inpaint_unet_dir), "sampling": {"scheduler": "Euler"}} if mode != "RePaint" else {}
    result = manager.run(inpaint(image, mask, mode=mode, mask_blur=4, **extra), on_step=lambda info: events.append("step"))
    assert events == ["step"] * 6 + ["feather"]
    assert outside_unchanged(result, image, mask)


def test_a_4_channel_model_as_inpainting_model_is_a_clear_error(manager, tiny_model_dir):
    with pytest.raises(ModelLoadError, match="takes 4 input channels, an inpainting UNet takes 9"):
        manager.run(inpaint(mode="inpainting model", inpaint_model=str(tiny_model_dir)))
    assert len(manager.run(inpaint()).images) == 1  # still serving


def test_controlnet_inpainting_runs_and_keeps_the_outside(manager, tiny_controlnet_dir):
    image, mask = photo(), box_mask()
    control = Control(units=(ControlUnit(model=str(tiny_controlnet_dir), image=box_mask().convert("RGB")),))
    result = manager.run(inpaint(image, mask, control=control, sampling={"scheduler": "Euler"}))
    assert outside_unchanged(result, image, mask)
    assert "ControlNet 0" in result.images[0].infotext


def test_only_masked_with_padding_0_and_a_mask_touching_the_border(manager):
    image = photo()
    mask = box_mask((40, 0, 64, 20))  # touches the top and right edges
    result = manager.run(inpaint(image, mask, inpaint_area="only masked", padding=0))
    assert result.images[0].image.size == (SIZE, SIZE)
    assert outside_unchanged(result, image, mask)


def test_a_one_pixel_mask_changes_at_most_that_pixel(manager):
    image, mask = photo(), box_mask((30, 30, 31, 31))
    result = manager.run(inpaint(image, mask, mask_blur=0))
    assert outside_unchanged(result, image, mask)


def test_an_empty_mask_is_a_clear_message(manager):
    with pytest.raises(RequestError, match="The mask is empty"):
        manager.run(inpaint(mask=Image.new("L", (SIZE, SIZE), 0)))


def test_a_mask_of_another_size_is_resized_and_said(manager):
    result = manager.run(inpaint(mask=box_mask((32, 32, 80, 80), size=(128, 128))))
    assert any("resized" in note for note in result.notes)


@pytest.mark.parametrize("mode", ["RGBA", "L", "P"])
def test_non_rgb_images_are_handled(manager, mode):
    result = manager.run(inpaint(photo(mode)))
    assert result.images[0].image.mode == "RGB"


def test_inverted_mask_inpaints_the_outside(manager):
    image, mask = photo(), box_mask()
    result = manager.run(inpaint(image, mask, invert_mask=True))
    inverted = Image.fromarray(255 - np.asarray(mask))
    assert outside_unchanged(result, image, inverted)


def test_interrupting_repaint_stops_within_one_step(manager):
    job = Job()
    seen = []

    def on_step(step):
        seen.append(step.step)
        if step.step == 2:
            job.cancel()

    with UNetCalls(manager.pipeline("txt2img").unet) as calls:
        result = manager.run(inpaint(repaint_r=2, sampling={"cfg": False, "steps": 10}), on_step=on_step, job=job)
    assert calls.count == 2 and result.interrupted and len(result.images) == 1


def test_mode_inpainting_model_without_a_model_is_a_clear_message():
    with pytest.raises(RequestError, match="needs a 9-channel inpainting model"):
        InpaintRequest(prompt="x", init_image=photo(), mask=box_mask(), mode="inpainting model")
