"""Masks, feathering, only-masked crops, fill, outpainting and paste-back (PIL/numpy only)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines.core.errors import RequestError
from scipy import ndimage

from pipelines.masks import (_feather_frame, crop_box, feather, fill_masked, latent_mask, mask_bbox, outpaint_canvas,
                             paste_back, prepare_inpaint, seam_metric, to_mask)

SIZE = 64


def noise_image(size=(SIZE, SIZE), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def mask_image(size=(SIZE, SIZE), box=(20, 16, 44, 40)) -> Image.Image:
    array = np.zeros((size[1], size[0]), np.uint8)
    x0, y0, x1, y1 = box
    array[y0:y1, x0:x1] = 255
    return Image.fromarray(array)


def px(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), np.int16)


# ----------------------------------------------------------------- paste-back keeps the outside
@pytest.mark.parametrize("area", ["whole picture", "only masked"])
@pytest.mark.parametrize("blur", [0, 4])
def test_pixels_outside_the_unblurred_mask_are_exactly_unchanged_after_paste_back(area, blur):
    image = noise_image((80, 64))
    mask = mask_image((80, 64), (30, 10, 50, 40))
    plan = prepare_inpaint(image, mask, SIZE, SIZE, mask_blur=blur, inpaint_area=area, padding=8)
    generated = noise_image(plan.size, seed=1)
    final = px(plan.finish(generated))
    outside = ~np.asarray(mask, bool) if area == "only masked" else ~plan.mask
    assert final.shape == px(plan.original).shape
    assert np.array_equal(final[outside], px(plan.original)[outside])
    inside = plan.weight == 1.0
    assert inside.sum() > 0
    if area == "whole picture":
        assert np.array_equal(final[inside], px(generated)[inside])  # the core is the generation itself
    else:
        assert not np.array_equal(final[inside], px(plan.original)[inside])


def test_feather_stays_inside_the_mask_and_ramps_to_one():
    mask = np.zeros((SIZE, SIZE), bool)
    mask[10:50, 12:52] = True
    weight = feather(mask, 4)
    assert (weight[~mask] == 0).all()
    assert (weight[18:42, 20:44] == 1).all()  # deeper than 2R: fully generated
    row = weight[30, 12:21]  # from the left edge inwards
    assert row[0] < 0.05 and np.all(np.diff(row) >= 0) and 0.3 < row[4] < 0.7
    assert np.array_equal(feather(mask, 0), mask.astype(np.float32))


def test_thin_strokes_and_single_pixels_are_not_feathered_away():
    mask = np.zeros((SIZE, SIZE), bool)
    mask[30, 30] = True  # one pixel
    mask[5:8, 5:60] = True  # a 3-px stroke
    mask[40:60, 10:50] = True  # and a big block beside them
    weight = feather(mask, 8)
    assert weight[30, 30] == 1.0 and (weight[5:8, 20:40] == 1.0).all()
    assert weight[41, 11] < 0.1 and weight[50, 30] == 1.0  # the block is still feathered


def test_a_mask_touching_the_border_is_not_feathered_at_the_border():
    mask = np.zeros((SIZE, SIZE), bool)
    mask[:, :24] = True
    weight = feather(mask, 4)
    assert (weight[:, 0] == 1).all() and (weight[0, :10] == 1).all() and weight[30, 23] < 0.05


def test_paste_back_blends_in_the_band():
    original, generated = Image.new("RGB", (4, 1), (0, 0, 0)), Image.new("RGB", (4, 1), (200, 100, 50))
    final = px(paste_back(original, generated, np.array([[0, 0.25, 0.5, 1]], np.float32)))
    assert final[0].tolist() == [[0, 0, 0], [50, 25, 12], [100, 50, 25], [200, 100, 50]]


def masks_of_every_shape(n=40, seed=0):
    """Blobs, speckle, masks touching one or two borders, one-pixel lines, smooth regions."""
    rng = np.random.default_rng(seed)
    for trial in range(n):
        H, W = (int(v) for v in rng.integers(8, 120, 2))
        kind = trial % 5
        if kind == 0:
            yield ndimage.binary_dilation(rng.random((H, W)) > 0.995, iterations=int(rng.integers(1, 10)))
        elif kind == 1:
            yield rng.random((H, W)) > 0.7
        elif kind == 2:
            mask = np.zeros((H, W), bool)
            mask[:rng.integers(1, H), rng.integers(0, W - 1):] = True
            yield mask
        elif kind == 3:
            mask = np.zeros((H, W), bool)
            mask[rng.integers(0, H), :] = mask[:, rng.integers(0, W)] = True
            yield mask
        else:
            yield ndimage.gaussian_filter(rng.random((H, W)), 3) > 0.5


def test_feathering_the_masks_window_gives_the_whole_frames_weights_bit_for_bit():
    for mask in masks_of_every_shape():
        if not mask.any() or mask.all():
            continue
        for radius in (1, 2, 4, 7, 16):
            assert np.array_equal(feather(mask, radius), _feather_frame(mask, radius))


def test_paste_back_is_the_float32_blend_of_the_whole_image_rounded():
    rng = np.random.default_rng(3)
    for mask in masks_of_every_shape(n=10, seed=1):
        H, W = mask.shape
        original, generated = noise_image((W, H), seed=4), noise_image((W, H), seed=5)
        weight = feather(mask, 4)
        weight[rng.random(weight.shape) < 0.05] = 0.3  # a band outside the feather too
        o, g = np.asarray(original, np.float32), np.asarray(generated, np.float32)
        w = weight[..., None]
        expected = np.clip(np.rint(np.where(w <= 0, o, np.where(w >= 1, g, o + (g - o) * w))), 0, 255).astype(np.uint8)
        assert np.array_equal(np.asarray(paste_back(original, generated, weight)), expected)


# ----------------------------------------------------------------- only masked
def test_only_masked_crop_is_the_mask_box_plus_padding_at_the_generation_aspect():
    mask = np.zeros((100, 200), bool)
    mask[40:60, 90:100] = True
    assert mask_bbox(mask) == (90, 40, 100, 60)
    assert crop_box(mask, 0, 64, 64) == (85, 40, 105, 60)  # 10×20 widened to square
    assert crop_box(mask, 10, 64, 64) == (75, 30, 115, 70)
    assert crop_box(mask, 10, 128, 64) == (55, 30, 135, 70)  # 2:1 generation
    assert crop_box(mask, 500, 64, 64) == (0, 0, 200, 100)  # clamped: as close as the image allows


def test_only_masked_with_a_mask_touching_the_border_and_padding_zero():
    image = noise_image((96, 64))
    mask = mask_image((96, 64), (0, 0, 10, 30))
    box = crop_box(to_mask(mask, image.size)[0], 0, 64, 64)
    assert box == (0, 0, 30, 30)  # widened into the image, not past its edge
    plan = prepare_inpaint(image, mask, 64, 64, inpaint_area="only masked", padding=0, mask_blur=4)
    assert plan.box == box and plan.init_image.size == (64, 64) and plan.gen_mask[:, :21].all()
    final = px(plan.finish(noise_image((64, 64), 2)))
    assert np.array_equal(final[30:], px(image)[30:]) and np.array_equal(final[:, 10:], px(image)[:, 10:])
    assert not np.array_equal(final[:30, :10], px(image)[:30, :10])


def test_a_one_pixel_mask_works_in_both_areas():
    image = noise_image()
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.putpixel((17, 9), 255)
    for area in ("whole picture", "only masked"):
        plan = prepare_inpaint(image, mask, SIZE, SIZE, inpaint_area=area, padding=0, mask_blur=4)
        assert plan.weight[9, 17] == 1.0 and plan.weight.sum() == 1.0
        final = px(plan.finish(Image.new("RGB", plan.size, (1, 2, 3))))
        assert final[9, 17].tolist() == [1, 2, 3]
        changed = np.argwhere((final != px(image)).any(axis=-1))
        assert changed.tolist() == [[9, 17]]
    assert latent_mask(plan.gen_mask).sum() >= 1


# ----------------------------------------------------------------- mask and image inputs
def test_an_empty_mask_is_a_clear_error():
    with pytest.raises(RequestError, match="mask is empty"):
        prepare_inpaint(noise_image(), Image.new("L", (SIZE, SIZE), 0), SIZE, SIZE)
    with pytest.raises(RequestError, match="invert"):
        prepare_inpaint(noise_image(), Image.new("L", (SIZE, SIZE), 255), SIZE, SIZE, invert=True)


def test_a_mask_of_another_size_is_resized_and_said_so():
    mask = mask_image((32, 32), (8, 8, 24, 24))  # half the image's size
    plan = prepare_inpaint(noise_image(), mask, SIZE, SIZE)
    assert plan.mask.shape == (SIZE, SIZE) and mask_bbox(plan.mask) == (16, 16, 48, 48)
    assert any("resized to the image size (64×64)" in n for n in plan.notes)
    stretched = prepare_inpaint(noise_image(), mask_image((64, 32), (0, 0, 8, 8)), SIZE, SIZE)
    assert any("stretching" in n for n in stretched.notes)


def test_inverting_the_mask_swaps_inside_and_outside():
    plain, notes = to_mask(mask_image(), (SIZE, SIZE))
    inverted, _ = to_mask(mask_image(), (SIZE, SIZE), invert=True)
    assert np.array_equal(plain, ~inverted) and not notes


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "LA", "1"])
def test_images_and_masks_of_any_mode_are_handled(mode):
    image = noise_image().convert(mode)
    mask = mask_image().convert(mode)
    plan = prepare_inpaint(image, mask, SIZE, SIZE, mask_blur=2)
    assert plan.original.mode == "RGB" and plan.init_image.mode == "RGB"
    assert mask_bbox(plan.mask) == (20, 16, 44, 40)


def test_an_rgba_mask_counts_only_its_opaque_white():
    array = np.zeros((SIZE, SIZE, 4), np.uint8)
    array[..., :3] = 255  # white everywhere…
    array[10:20, 10:20, 3] = 255  # …but opaque only here (a brush layer)
    hard, _ = to_mask(Image.fromarray(array, "RGBA"), (SIZE, SIZE))
    assert mask_bbox(hard) == (10, 10, 20, 20) and hard.sum() == 100


def test_whole_picture_fits_an_image_of_another_size():
    plan = prepare_inpaint(noise_image((128, 96)), mask_image((128, 96), (60, 40, 70, 50)), SIZE, SIZE)
    assert plan.original.size == plan.init_image.size == (SIZE, SIZE) and plan.mask.any()
    assert any("resized to 64×64" in n for n in plan.notes)


# ----------------------------------------------------------------- masked content and fill
def test_fill_takes_the_colours_around_the_hole_and_keeps_the_rest():
    array = np.zeros((SIZE, SIZE, 3), np.uint8)
    array[:, :32] = (220, 30, 30)
    array[:, 32:] = (30, 30, 220)
    array[20:44, 8:24] = (0, 255, 0)  # to be filled: green must disappear
    mask = np.zeros((SIZE, SIZE), bool)
    mask[20:44, 8:24] = True
    filled = px(fill_masked(Image.fromarray(array), mask))
    assert np.array_equal(filled[~mask], array[~mask])
    hole = filled[mask].mean(axis=0)
    assert hole[0] > 150 and hole[1] < 60 and hole[2] < 120, hole  # red from around it, no green


def test_fill_is_the_init_only_for_masked_content_fill():
    image, mask = noise_image(), mask_image()
    original = prepare_inpaint(image, mask, SIZE, SIZE, masked_content="original")
    filled = prepare_inpaint(image, mask, SIZE, SIZE, masked_content="fill")
    assert np.array_equal(px(original.init_image), px(image))
    outside = ~filled.mask
    assert np.array_equal(px(filled.init_image)[outside], px(image)[outside])
    assert px(filled.init_image)[filled.mask].std() < px(image)[filled.mask].std() / 2  # smooth, not the noise
    with pytest.raises(RequestError, match="masked content"):
        prepare_inpaint(image, mask, SIZE, SIZE, masked_content="blur")


def test_latent_mask_covers_every_painted_pixel():
    mask = np.zeros((SIZE, SIZE), bool)
    mask[9, 17] = True
    mask[40:49, 0:3] = True
    small = latent_mask(mask)
    assert small.shape == (8, 8) and small.dtype == np.float32
    assert np.argwhere(small).tolist() == [[1, 2], [5, 0], [6, 0]]


# ----------------------------------------------------------------- outpainting
def test_outpaint_extends_the_canvas_and_masks_the_new_area():
    image = noise_image((40, 24))
    canvas, mask, notes = outpaint_canvas(image, left=16, up=5, overlap=4)
    assert canvas.size == (56, 32) and mask.size == (56, 32)
    assert any("up 5 px rounded up to 8" in n for n in notes)
    m = np.asarray(mask) > 0
    assert np.array_equal(px(canvas)[8:, 16:], px(image))  # the old image sits untouched at (16, 8)
    assert m[:8].all() and m[:, :16].all()  # the new strips
    assert m[8:, 16:20].all() and m[8:12, 16:].all()  # `overlap` px into the old image
    assert not m[12:, 20:].any()  # the rest is kept, including the sides that were not extended
    new = m.copy()
    new[8:, 16:] = False
    assert px(canvas)[new].std() < px(image).std()  # filled with blurred surroundings, not black
    plan = prepare_inpaint(canvas, mask, 56, 32, mask_blur=2)
    assert np.array_equal(px(plan.finish(noise_image((56, 32), 3)))[12:, 20:], px(image)[4:, 4:])


def test_outpaint_stretch_repeats_the_edge_and_bad_sizes_are_errors():
    image = noise_image((16, 16))
    canvas, mask, _ = outpaint_canvas(image, right=8, fill="stretch", overlap=0)
    assert canvas.size == (24, 16) and np.array_equal(px(canvas)[:, 16:], np.repeat(px(image)[:, 15:16], 8, axis=1))
    assert (np.asarray(mask)[:, 16:] == 255).all() and (np.asarray(mask)[:, :16] == 0).all()
    with pytest.raises(RequestError, match="at least one side"):
        outpaint_canvas(image)
    with pytest.raises(RequestError, match="≥ 0"):
        outpaint_canvas(image, left=-8)


# ----------------------------------------------------------------- seam metric
def test_seam_metric_sees_a_hard_edge_at_the_mask_border_and_not_a_smooth_image():
    mask = np.zeros((SIZE, SIZE), bool)
    mask[16:48, 16:48] = True
    smooth = np.tile(np.linspace(0, 255, SIZE), (SIZE, 1))
    seam = smooth.copy()
    seam[mask] = 255 - seam[mask]  # a pasted patch that does not match its surroundings
    as_image = lambda a: Image.fromarray(a.astype(np.uint8)).convert("RGB")  # noqa: E731
    assert abs(seam_metric(as_image(smooth), mask)["seam"]) < 1
    assert seam_metric(as_image(seam), mask)["seam"] > 20
