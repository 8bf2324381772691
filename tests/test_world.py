"""The procedural captioned world (training/data.py) and the control maps it trains on
(pipelines/preprocess.py): deterministic from a seed, captions that say what is drawn, and
canny / OpenPose maps that match what the app and ControlNet expect. All on the CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.preprocess import (OPENPOSE_COLOURS, OPENPOSE_JOINTS, OPENPOSE_LIMBS, canny, canny_edges,
                                  draw_openpose, draw_openpose_array)
from training import data, models, readback, render
from training.pool import control_maps


@pytest.fixture(scope="module")
def world():
    scenes = data.sample_scenes(96, seed=11)
    return scenes, data.to_uint8(data.render_scenes(scenes)).numpy()


def object_mask(scenes, i, j) -> np.ndarray:
    """Pixels well inside object j of scene i, from its own SDF."""
    px, py = render.pixel_grid(data.IMAGE_SIZE, "cpu")
    name = data.SHAPES[int(scenes.shape[i, j])]
    d = render.SHAPE_SDFS[name](px - scenes.centre[i, j, 0], py - scenes.centre[i, j, 1], scenes.radius[i, j])
    return (d[0] < -1).numpy()


def test_same_seed_same_world_other_seed_another():
    a, b, c = (data.sample_scenes(16, seed=s) for s in (3, 3, 4))
    assert a.captions == b.captions and a.captions != c.captions
    assert torch.equal(data.render_scenes(a), data.render_scenes(b))
    assert torch.equal(a.keypoints.nan_to_num(), b.keypoints.nan_to_num())


def test_images_are_128_rgb_in_range(world):
    scenes, images = world
    assert images.shape == (96, 128, 128, 3) and images.dtype == np.uint8
    assert (data.PERSON_KIND == scenes.kind).any() and (data.SHAPES_KIND == scenes.kind).any()
    assert set(scenes.present.sum(1)[scenes.kind == data.SHAPES_KIND].tolist()) == {1, 2, 3}


def test_background_colour_named_in_caption_dominates(world):
    scenes, images = world
    for i, image in enumerate(images):
        bg = data.COLOUR_NAMES[int(scenes.background[i])]
        assert readback.background_label(readback.palette_labels(image)) == int(scenes.background[i])
        if "background" in scenes.captions[i]:
            assert scenes.captions[i].endswith(f"{bg} background")


def test_each_named_object_has_its_colour_shape_and_position(world):
    scenes, images = world
    for i in (scenes.kind == data.SHAPES_KIND).nonzero().squeeze(1).tolist():
        labels = readback.palette_labels(images[i])
        for j in range(int(scenes.present[i].sum())):
            colour, shape = data.COLOUR_NAMES[int(scenes.colour[i, j])], data.SHAPES[int(scenes.shape[i, j])]
            assert f"{colour} {shape}" in scenes.captions[i]
            mask = object_mask(scenes, i, j)
            # later objects may clip an edge; the named colour still owns the object's pixels
            assert (labels[mask] == int(scenes.colour[i, j])).mean() > 0.8, scenes.captions[i]
            ys, xs = np.nonzero(mask)
            position = int(scenes.position[i, j])
            assert readback.position_of(xs.mean(), ys.mean()) == position
            phrase = data.POSITIONS[position][0]
            assert phrase in scenes.captions[i] or (position == data.CENTRE and scenes.present[i].sum() == 1)


def test_figures_wear_the_named_colour_on_their_skeleton(world):
    scenes, images = world
    people = (scenes.kind == data.PERSON_KIND).nonzero().squeeze(1).tolist()
    assert people
    for i in people:
        colour = data.COLOUR_NAMES[int(scenes.colour[i, 0])]
        assert scenes.captions[i].startswith(f"{data.article(colour)} {colour} person {data.POSES[int(scenes.pose[i])]}")
        assert readback.limb_coverage(images[i], scenes.keypoints[i].numpy()) > 0.95
        labels = readback.palette_labels(images[i])
        fg = readback.foreground_mask(images[i], labels, int(scenes.background[i]))
        assert np.bincount(labels[fg]).argmax() == int(scenes.colour[i, 0])


def test_explicit_scene_and_caption():
    scene = data.scene_from_objects([("large", "red", "circle", "in the centre")], "white")
    assert scene.captions == ["a large red circle on a white background"]
    image = data.to_uint8(data.render_scenes(scene))[0].numpy()
    assert tuple(image[64, 64]) == data.COLOURS["red"] and tuple(image[5, 5]) == data.COLOURS["white"]
    two = data.scene_from_objects([("large", "orange", "star", "on the left"), ("small", "blue", "ring", "at the top right")], "yellow")
    assert two.captions == ["a large orange star on the left and a small blue ring at the top right, on a yellow background"]


def test_heldout_combinations_never_drawn_for_training():
    scenes = data.sample_scenes(3000, seed=5)
    table = data.heldout_triples()
    assert table.sum() == 22 and table.any(dim=(1, 2)).all() and table.any(dim=(0, 1)).all()
    hits = table[scenes.colour, scenes.shape, scenes.background[:, None].expand_as(scenes.colour)] & scenes.present
    assert not hits.any()


def test_fast_tokenizer_matches_clip_tokenizer():
    tokenizer = models.load_tokenizer()
    captions = data.sample_scenes(200, seed=8).captions + [""]
    ours = data.CaptionTokenizer(tokenizer)(captions)
    theirs = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert len(tokenizer) == 49408 and torch.equal(ours, theirs)


def test_shape_reader_recognises_rendered_shapes():
    """The evaluator's silhouette matcher, on ground truth: it must not be the weak link."""
    scenes = data.sample_scenes(60, seed=21, person_fraction=0.0, heldout="ignore")
    hits = []
    for i in range(len(scenes)):
        mask = object_mask(scenes, i, 0)
        hits.append(readback.classify_shape(mask) == int(scenes.shape[i, 0]))
    assert np.mean(hits) >= 0.95


# ---- control maps -------------------------------------------------------------------------

def test_canny_map_is_rgb_black_and_white_on_the_shape_outline():
    scene = data.scene_from_objects([("large", "blue", "square", "in the centre")], "yellow")
    image = data.to_uint8(data.render_scenes(scene))[0].numpy()
    control = canny(image, 100, 200)
    arr = np.asarray(control)
    assert control.mode == "RGB" and control.size == (128, 128)
    assert set(np.unique(arr)) == {0, 255} and (arr[:, :, 0] == arr[:, :, 2]).all()
    ys, xs = np.nonzero(arr[:, :, 0])
    half = 0.85 * float(scene.radius[0, 0])  # the square's half side
    assert np.all(np.maximum(abs(xs + 0.5 - 64), abs(ys + 0.5 - 64)) > half - 2.5)
    assert np.all(np.maximum(abs(xs + 0.5 - 64), abs(ys + 0.5 - 64)) < half + 2.5)


def test_canny_thresholds_matter_and_are_checked():
    rng = np.random.default_rng(0)
    noisy = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    assert canny_edges(noisy, 50, 100).sum() > canny_edges(noisy, 300, 600).sum()
    with pytest.raises(ValueError):
        canny_edges(noisy, 200, 100)


def spread_skeleton() -> np.ndarray:
    """18 joints at least 12 px apart, so no joint disc covers another's centre."""
    grid = [(x, y) for y in range(20, 240, 40) for x in range(20, 240, 60)]
    return np.array(grid[:18], dtype=np.float64) + 0.3


def test_openpose_joint_pixels_have_the_joint_colours():
    keypoints = spread_skeleton()
    canvas = draw_openpose_array(keypoints, 256, 256)
    assert canvas.shape == (256, 256, 3) and canvas.dtype == np.uint8
    for (x, y), colour in zip(keypoints, OPENPOSE_COLOURS):
        assert tuple(canvas[int(y), int(x)]) == colour


def test_openpose_missing_joints_draw_nothing_of_theirs():
    keypoints = spread_skeleton()
    keypoints[OPENPOSE_JOINTS.index("right_wrist")] = np.nan
    canvas = draw_openpose_array(keypoints, 256, 256)
    full = draw_openpose_array(spread_skeleton(), 256, 256)
    assert (canvas != full).any()
    wrist_limb = OPENPOSE_LIMBS.index((3, 4))
    dim = tuple(int(c * 0.6) for c in OPENPOSE_COLOURS[wrist_limb])
    assert not (canvas == dim).all(-1).any()
    assert tuple(canvas[int(keypoints[3, 1]), int(keypoints[3, 0])]) == OPENPOSE_COLOURS[3]
    assert not draw_openpose_array(np.full((18, 2), np.nan), 64, 64).any()


def test_openpose_drawing_matches_controlnet_aux():
    """Same pixels as controlnet-aux's body drawing, the maps lllyasviel's pose ControlNets saw."""
    from controlnet_aux.open_pose.body import Keypoint
    from controlnet_aux.open_pose.util import draw_bodypose

    rng = np.random.default_rng(1)
    for _ in range(5):
        keypoints = rng.uniform(10, 190, size=(18, 2))
        keypoints[rng.integers(18)] = np.nan
        theirs = draw_bodypose(np.zeros((200, 200, 3), np.uint8),
                               [None if np.isnan(k).any() else Keypoint(k[0] / 200, k[1] / 200) for k in keypoints])
        ours = draw_openpose_array(keypoints, 200, 200)
        assert (ours != theirs).any(-1).mean() < 0.002  # float rounding of x·W/W may move a pixel


def test_training_control_maps_come_from_the_app_preprocessors(world):
    scenes, images = world
    people = (scenes.kind == data.PERSON_KIND).nonzero().squeeze(1)[:3]
    sub = scenes.select(people)
    pose = control_maps("pose", torch.from_numpy(images[people.numpy()]), sub, seed=0).numpy()
    for k, m in zip(sub.keypoints.numpy(), pose):
        assert np.array_equal(m.transpose(1, 2, 0), np.asarray(draw_openpose(k, 128, 128)))
        x, y = k[OPENPOSE_JOINTS.index("neck")]
        assert tuple(m[:, int(y), int(x)]) == OPENPOSE_COLOURS[1]
    edges = control_maps("canny", torch.from_numpy(images[:4]), scenes.select(torch.arange(4)), seed=0).numpy()
    assert edges.shape == (4, 1, 128, 128) and set(np.unique(edges)) <= {0, 255} and edges.any()
