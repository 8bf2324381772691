"""Control-map preprocessors: canny thresholds, the registry and generation-size maps, the
weight-free controlnet-aux detectors (lineart standard, content shuffle) and their errors."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import skimage.data
from PIL import Image

from pipelines.core.errors import ModelLoadError, RequestError
from pipelines.core.images import fit
from pipelines.preprocess import canny, canny_edges
from pipelines.preprocess_extra import (
    PREPROCESSORS, RESIZE_MODES, ControlMap, available_preprocessors, content_shuffle, control_map,
    lineart_standard,
)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(skimage.data.astronaut())


# --- canny ---------------------------------------------------------------------------------------

def edge_pixels(image, low, high) -> int:
    return int((canny_edges(image, low, high) > 0).sum())


def test_canny_thresholds_change_the_map_monotonically(photo):
    # both thresholds up together
    sweep = [(20, 40), (50, 100), (100, 200), (150, 300), (250, 500), (400, 800)]
    counts = [edge_pixels(photo, lo, hi) for lo, hi in sweep]
    assert all(a >= b for a, b in zip(counts, counts[1:])), counts
    assert counts[0] > 3 * counts[-1] > 0
    # one threshold at a time: a higher low threshold continues fewer edges, a higher high
    # threshold starts fewer; each map is a subset of the one before
    for vary in ("low", "high"):
        values = [10, 40, 80, 120, 160, 200] if vary == "low" else [200, 260, 320, 400, 500]
        maps = [canny_edges(photo, v, 200) if vary == "low" else canny_edges(photo, 100, v) for v in values]
        for before, after in zip(maps, maps[1:]):
            assert not (after & ~before).any(), f"raising {vary} added edge pixels"
        assert (maps[0] > 0).sum() > (maps[-1] > 0).sum()


def test_canny_map_is_white_edges_on_black_rgb(photo):
    edges = canny(photo, 100, 200)
    array = np.asarray(edges)
    assert edges.mode == "RGB" and array.shape == (512, 512, 3)
    assert set(np.unique(array)) <= {0, 255} and (array[..., 0] == array[..., 2]).all()
    np.testing.assert_array_equal(np.asarray(PREPROCESSORS["canny"](photo, low=100, high=200)), array)


# --- registry ------------------------------------------------------------------------------------

def test_registry_names():
    assert set(PREPROCESSORS) == {"none", "canny", "pose (mediapipe)", "pose (openpose)", "lineart standard", "shuffle"}
    names = available_preprocessors(annotators_dir="/nonexistent")
    assert {"none", "canny", "pose (mediapipe)", "lineart standard", "shuffle"} <= set(names)
    for name, pre in PREPROCESSORS.items():
        for key, spec in pre.params.items():
            assert spec.minimum <= spec.default <= spec.maximum, (name, key)


@pytest.mark.parametrize("name", ["none", "canny", "pose (mediapipe)", "lineart standard", "shuffle"])
@pytest.mark.parametrize("size", [(512, 512), (512, 768), (384, 256)])
def test_every_preprocessor_gives_an_rgb_map_at_the_generation_size(photo, name, size):
    width, height = size
    result = control_map(name, photo, width, height)
    assert isinstance(result, ControlMap) and result.preprocessor == name
    assert result.image.mode == "RGB" and result.image.size == (width, height)
    assert result.ok and result.seconds >= 0
    assert set(result.params) == set(PREPROCESSORS[name].params)
    # the callable form gives the same picture
    again = PREPROCESSORS[name](photo, width=width, height=height)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(result.image))


def test_none_is_the_fitted_image(photo):
    for mode in RESIZE_MODES:
        result = control_map("none", photo, 256, 384, resize_mode=mode)
        np.testing.assert_array_equal(np.asarray(result.image), np.asarray(fit(photo, 256, 384, mode)))
    assert PREPROCESSORS["none"](photo).size == photo.size  # no size: the input's own


def test_pose_map_keypoints_are_in_generation_pixels(photo):
    result = control_map("pose (mediapipe)", photo, 384, 384)
    assert result.pose is not None and result.pose.found and (result.pose.width, result.pose.height) == (384, 384)
    kp = result.pose.keypoints[np.isfinite(result.pose.keypoints)]
    assert kp.min() >= 0 and kp.max() < 384
    np.testing.assert_array_equal(np.asarray(result.image), np.asarray(result.pose.draw()))


def test_no_person_gives_an_empty_map_and_a_message():
    result = control_map("pose (mediapipe)", Image.new("RGB", (300, 200), (200, 180, 40)), 512, 512)
    assert not result.ok and "No person found" in result.message
    assert not result.pose.found and not np.asarray(result.image).any() and result.image.size == (512, 512)


def test_numpy_input_and_transparency(photo):
    rgba = np.dstack([np.asarray(photo), np.full((512, 512), 255, np.uint8)])
    np.testing.assert_array_equal(np.asarray(PREPROCESSORS["canny"](rgba)), np.asarray(PREPROCESSORS["canny"](photo)))


@pytest.mark.parametrize("call, error, message", [
    (lambda p: control_map("sobel", p, 64, 64), RequestError, "unknown preprocessor 'sobel'"),
    (lambda p: control_map("canny", None, 64, 64), RequestError, "no control image"),
    (lambda p: control_map("canny", p, 64, 64, threshold=3), RequestError, r"unknown parameter.*threshold.*accepted: low, high"),
    (lambda p: control_map("canny", p, 64, 64, low=300), RequestError, r"low threshold must be a number in \[0, 255\]"),
    (lambda p: control_map("canny", p, 64, 64, low=150, high=100), RequestError, "must not exceed high"),
    (lambda p: control_map("canny", p, 64, 64, high=float("nan")), RequestError, "high threshold"),
    (lambda p: control_map("shuffle", p, 64, 64, f=0), RequestError, "feature size"),
    (lambda p: control_map("canny", p, 0, 64), RequestError, "must be positive"),
    (lambda p: control_map("canny", p, 64, 64, resize_mode="squash"), RequestError, "unknown resize mode"),
    (lambda p: control_map("pose (openpose)", p, 64, 64, annotators_dir="/nonexistent"), ModelLoadError, "lllyasviel/Annotators"),
])
def test_bad_requests_are_clear_errors(photo, call, error, message, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # no cached OpenPose
    with pytest.raises(error, match=message):
        call(photo)


def test_annotators_dir_is_accepted_by_every_preprocessor(photo):
    """The UI may pass its annotators folder to whichever preprocessor is selected."""
    assert control_map("canny", photo, 64, 64, annotators_dir="/x").image.size == (64, 64)


# --- lineart standard and content shuffle ----------------------------------------------------------

def test_lineart_draws_dark_strokes_as_white_lines():
    image = np.full((256, 256, 3), 255, np.uint8)
    image[:, 126:130] = 0  # a black vertical stroke on white
    lines = np.asarray(lineart_standard(image))[..., 0].astype(int)
    assert lines.shape == (256, 256)
    assert lines[:, 126:130].mean() > 100 and lines[:, :100].max() == 0 and lines[:, 160:].max() == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice" on a flat image
        assert not np.asarray(lineart_standard(np.full((64, 64, 3), 90, np.uint8))).any()


def test_shuffle_is_seeded_and_keeps_the_content(photo):
    a, b = (np.asarray(content_shuffle(photo, seed=5)) for _ in range(2))
    c = np.asarray(content_shuffle(photo, seed=6))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c).mean() > 10
    # only the layout changes: a flat image stays flat, the colour mean stays near the input's
    flat = np.asarray(content_shuffle(np.full((64, 96, 3), (10, 200, 30), np.uint8)))
    assert flat.shape == (64, 96, 3) and (flat == (10, 200, 30)).all()
    assert np.abs(a.reshape(-1, 3).mean(0) - np.asarray(photo).reshape(-1, 3).mean(0)).max() < 40


@pytest.mark.slow  # imports controlnet-aux (~7 s)
def test_lineart_and_shuffle_match_controlnet_aux(photo):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from controlnet_aux.lineart_standard import LineartStandardDetector
        from controlnet_aux.shuffle import ContentShuffleDetector

    for image in (photo, photo.resize((640, 448)), photo.resize((300, 500))):
        np.testing.assert_array_equal(np.asarray(lineart_standard(image)), np.asarray(LineartStandardDetector()(image)))
    for seed in (0, 3):
        np.random.seed(seed)  # controlnet-aux draws from numpy's global RNG
        expected = np.asarray(ContentShuffleDetector()(photo))  # 512² in, 512² out
        np.testing.assert_array_equal(np.asarray(content_shuffle(photo, seed=seed)), expected)
