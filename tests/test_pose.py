"""Pose: mediapipe → OpenPose-18 mapping, offline detection (audit hook: no network), no person,
keypoint JSON, presets, and the optional OpenPose detector's local-only loading."""
from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import skimage.data
from PIL import Image

from pipelines import pose as P
from pipelines.core.errors import ModelLoadError
from pipelines.preprocess import JOINT_INDEX, OPENPOSE_COLOURS, OPENPOSE_JOINTS, draw_openpose_array

# --- network audit: every socket lookup/connection attempted by this thread while recording ---

NET_EVENTS = ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex",
              "socket.gethostbyaddr", "socket.sendto", "socket.bind", "urllib.Request", "http.client.connect")
_recording: dict[int, list] = {}


def _audit(event, args):
    if _recording and event in NET_EVENTS:
        log = _recording.get(threading.get_ident())
        if log is not None:
            log.append((event, repr(args)[:200]))


sys.addaudithook(_audit)  # audit hooks cannot be removed; it only records inside network_audit()


@contextlib.contextmanager
def network_audit():
    events: list = []
    _recording[threading.get_ident()] = events
    try:
        yield events
    finally:
        del _recording[threading.get_ident()]


def test_audit_hook_sees_a_connection_attempt():
    """The hook is live: a real (refused) loopback connection is recorded."""
    import socket

    with network_audit() as events, socket.socket() as s:
        s.settimeout(0.5)
        with contextlib.suppress(OSError):
            s.connect(("127.0.0.1", 9))
    assert any(e == "socket.connect" for e, _ in events)


# --- mapping ------------------------------------------------------------------------------------

MP = {name: i for i, name in enumerate(P.MEDIAPIPE_LANDMARKS)}


def synthetic_landmarks(rng: np.random.Generator) -> np.ndarray:
    """33 distinct normalised landmark positions inside the image."""
    return rng.uniform(0.05, 0.95, size=(33, 2))


def test_mapping_puts_each_joint_on_its_source_landmark():
    width, height = 640, 480
    xy = synthetic_landmarks(np.random.default_rng(0))
    keypoints, confidence = P.landmarks_to_openpose(xy, width, height)
    pixels = xy * [width, height]
    for j, name in enumerate(OPENPOSE_JOINTS):
        if name == "neck":
            expected = (pixels[MP["left_shoulder"]] + pixels[MP["right_shoulder"]]) / 2
        else:
            expected = pixels[MP[name]]  # same name on both sides: person's left is left in both
        np.testing.assert_allclose(keypoints[j], expected, atol=1e-9, err_msg=name)
    assert (confidence == 1).all()


def test_mapping_hides_unseen_and_out_of_image_joints():
    width, height = 300, 200
    xy = synthetic_landmarks(np.random.default_rng(1))
    visibility = np.full(33, 0.9)
    visibility[MP["left_wrist"]] = 0.2        # occluded
    visibility[MP["right_shoulder"]] = 0.3    # occluded: right shoulder and the neck go
    xy[MP["left_ankle"]] = (0.5, 1.3)         # below the frame
    keypoints, confidence = P.landmarks_to_openpose(xy, width, height, visibility, min_visibility=0.5)
    hidden = {"left_wrist", "right_shoulder", "neck", "left_ankle"}
    for j, name in enumerate(OPENPOSE_JOINTS):
        assert np.isnan(keypoints[j]).all() == (name in hidden), name
        assert (confidence[j] == 0) == (name in hidden), name
    assert confidence[JOINT_INDEX["nose"]] == pytest.approx(0.9)
    with pytest.raises(ValueError, match=r"\(33, 2\)"):
        P.landmarks_to_openpose(xy[:17], width, height)


def test_drawn_synthetic_figure_has_each_joint_colour_at_its_landmark():
    """Landmarks of a known figure → mapping → the standard drawing: every joint's disc, in its
    OpenPose colour, is centred on the landmark's pixel."""
    width, height = 512, 512
    figure = P.preset_pose("T-pose", width, height).person(0)  # a figure with well-separated joints
    xy = np.full((33, 2), 0.5)
    for j, name in enumerate(OPENPOSE_JOINTS):
        if name != "neck":
            xy[MP[name]] = figure[j] / [width, height]
    keypoints, _ = P.landmarks_to_openpose(xy, width, height)
    canvas = draw_openpose_array(keypoints, width, height)
    checked = 0
    for j, (x, y) in enumerate(keypoints):
        later = keypoints[j + 1:]
        if len(later) and np.hypot(*(later - (x, y)).T).min() < 10:
            continue  # a later joint's disc covers part of this one (eyes/ears near the nose)
        assert tuple(canvas[int(y), int(x)]) == OPENPOSE_COLOURS[j], OPENPOSE_JOINTS[j]
        checked += 1
    assert checked >= 14


# --- detection on a real photo ----------------------------------------------------------------

@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()  # 512×512 RGB, Eileen Collins, head and upper body


@pytest.fixture(scope="module")
def astronaut_pose(astronaut):
    with network_audit() as events:
        result = P.detect_pose_mediapipe(astronaut)
    result.network_events = events
    return result


def test_detection_finds_the_astronaut_offline(astronaut_pose):
    pose = astronaut_pose
    assert pose.network_events == []  # no lookup, no connection, while importing + detecting
    assert pose.found and pose.people == 1 and pose.message == ""
    assert (pose.width, pose.height) == (512, 512)
    kp = {name: pose.keypoints[0, j] for j, name in enumerate(OPENPOSE_JOINTS)}
    for name in ("nose", "neck", "right_shoulder", "left_shoulder", "right_eye", "left_eye"):
        assert np.isfinite(kp[name]).all(), f"{name} not found"
    # the face occupies about x 170–290, y 60–190 of this photo
    assert 170 < kp["nose"][0] < 290 and 60 < kp["nose"][1] < 190
    # head above shoulders (image y grows downwards), eyes above the nose
    assert kp["right_eye"][1] < kp["nose"][1] and kp["left_eye"][1] < kp["nose"][1]
    for side in ("right", "left"):
        assert kp["nose"][1] + 50 < kp[f"{side}_shoulder"][1]
    # facing the camera: the person's right shoulder is on the image's left
    assert kp["right_shoulder"][0] < kp["nose"][0] < kp["left_shoulder"][0]
    # shoulders are wide apart (the suit spans ~200 px), the neck between them
    assert kp["left_shoulder"][0] - kp["right_shoulder"][0] > 120
    assert kp["neck"] == pytest.approx((kp["left_shoulder"] + kp["right_shoulder"]) / 2)
    # hips, when visible, are below the shoulders
    for side in ("right", "left"):
        if np.isfinite(kp[f"{side}_hip"]).all():
            assert kp[f"{side}_hip"][1] > kp[f"{side}_shoulder"][1] + 100


def test_detection_matches_raw_mediapipe_landmarks(astronaut, astronaut_pose):
    """The result is exactly the mapping of what mediapipe itself returns for the photo."""
    from mediapipe.python.solutions import pose as mp_pose

    with mp_pose.Pose(static_image_mode=True, model_complexity=1) as raw:
        marks = raw.process(astronaut).pose_landmarks.landmark
    xy = np.array([(m.x, m.y) for m in marks])
    visibility = np.array([m.visibility for m in marks])
    keypoints, confidence = P.landmarks_to_openpose(xy, 512, 512, visibility)
    np.testing.assert_allclose(astronaut_pose.keypoints[0], keypoints, atol=1e-3)
    np.testing.assert_allclose(astronaut_pose.confidence[0], confidence, atol=1e-4)


def test_pose_map_is_the_standard_drawing(astronaut_pose):
    drawn = np.asarray(astronaut_pose.draw())
    assert drawn.shape == (512, 512, 3)
    np.testing.assert_array_equal(drawn, draw_openpose_array(astronaut_pose.keypoints, 512, 512))
    nose = astronaut_pose.keypoints[0, JOINT_INDEX["nose"]].astype(int)
    assert tuple(drawn[nose[1], nose[0]]) == OPENPOSE_COLOURS[JOINT_INDEX["nose"]]
    half = np.asarray(astronaut_pose.draw(256, 256))  # drawn on another canvas: scaled keypoints
    assert half.shape == (256, 256, 3) and tuple(half[nose[1] // 2, nose[0] // 2]) == OPENPOSE_COLOURS[0]


def test_fresh_interpreter_imports_and_detects_without_network(tmp_path):
    """The whole path in a new process — import of mediapipe, graph and model loading,
    detection — with the audit hook installed before anything else."""
    script = textwrap.dedent(f"""
        import json, sys
        events = []
        def hook(event, args):
            if event.startswith(("socket.", "urllib.", "http.")):
                events.append(event)
        sys.addaudithook(hook)
        sys.path.insert(0, {str(P.__file__.rsplit('/pipelines/', 1)[0])!r})
        import skimage.data
        from pipelines.pose import detect_pose_mediapipe
        result = detect_pose_mediapipe(skimage.data.astronaut())
        print(json.dumps({{"found": result.found, "events": events}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"found": True, "events": []}


def test_no_person_is_a_clear_empty_result():
    for image in (np.full((240, 320, 3), 127, np.uint8),
                  Image.new("RGB", (200, 300), (30, 120, 200)),
                  np.tile(np.linspace(0, 255, 256, dtype=np.uint8), (256, 1))):  # grey gradient
        with network_audit() as events:
            pose = P.detect_pose_mediapipe(image)
        assert events == []
        assert not pose.found and pose.people == 0
        assert pose.keypoints.shape == (0, 18, 2) and pose.confidence.shape == (0, 18)
        assert "No person found" in pose.message
        drawn = np.asarray(pose.draw())
        assert drawn.shape[:2] == (pose.height, pose.width) and not drawn.any()


def test_unshipped_mediapipe_models_are_refused_not_downloaded():
    """model_complexity 0/2 are not in the wheel; mediapipe would fetch them from GCS."""
    with network_audit() as events, pytest.raises(ModelLoadError, match="would be downloaded"):
        P.detect_pose_mediapipe(np.zeros((64, 64, 3), np.uint8), model_complexity=2)
    assert events == []


# --- keypoint JSON ------------------------------------------------------------------------------

def test_json_round_trip_keeps_keypoints_missing_joints_and_canvas(astronaut_pose, tmp_path):
    text = astronaut_pose.to_json()
    data = json.loads(text)
    assert data["canvas_width"] == 512 and data["canvas_height"] == 512
    assert len(data["people"]) == 1 and len(data["people"][0]["pose_keypoints_2d"]) == 54
    back = P.pose_from_json(text)
    np.testing.assert_allclose(back.keypoints, astronaut_pose.keypoints, atol=0.006, equal_nan=True)
    np.testing.assert_allclose(back.confidence, astronaut_pose.confidence, atol=1e-4)
    # missing joints are written as 0, 0, 0 and read back as NaN
    missing = np.isnan(astronaut_pose.keypoints[0, :, 0])
    flat = np.array(data["people"][0]["pose_keypoints_2d"]).reshape(18, 3)
    assert (flat[missing] == 0).all() and np.isnan(back.keypoints[0, missing]).all()
    # file helpers, and several people on a non-square canvas
    two = P.PoseResult(np.stack([P.preset_pose("standing", 768, 512).person(),
                                 P.preset_pose("walking", 768, 512).person()]), np.ones((2, 18)), 768, 512)
    loaded = P.load_pose_json(P.save_pose_json(two, tmp_path / "pose.json"))
    assert (loaded.width, loaded.height, loaded.people) == (768, 512, 2)
    np.testing.assert_allclose(loaded.keypoints, two.keypoints, atol=0.006, equal_nan=True)
    np.testing.assert_array_equal(np.asarray(loaded.draw()), np.asarray(two.draw()))


def test_json_without_canvas_takes_the_given_size():
    data = {"people": [{"pose_keypoints_2d": [10, 20, 1] * 18}]}
    assert (P.pose_from_json(data, 64, 48).width, P.pose_from_json(data, 64, 48).height) == (64, 48)
    empty = P.pose_from_json({"people": [], "canvas_width": 64, "canvas_height": 64})
    assert not empty.found and empty.keypoints.shape == (0, 18, 2)


GOOD = [1.0, 2.0, 1.0] * 18


@pytest.mark.parametrize("data, message", [
    ("{people: []", "not valid JSON"),
    ("[1, 2]", "must be an object"),
    ({"canvas_width": 8, "canvas_height": 8}, "no 'people' list"),
    ({"people": {"a": 1}, "canvas_width": 8, "canvas_height": 8}, "'people' must be a list"),
    ({"people": [{"keypoints": GOOD}], "canvas_width": 8, "canvas_height": 8}, r"people\[0\] must be an object with 'pose_keypoints_2d'"),
    ({"people": [{"pose_keypoints_2d": GOOD[:-3]}], "canvas_width": 8, "canvas_height": 8}, "54 numbers.*got 51"),
    ({"people": [{"pose_keypoints_2d": [1, 1, 1] * 25}], "canvas_width": 8, "canvas_height": 8}, "BODY_25"),
    ({"people": [{"pose_keypoints_2d": GOOD[:4] + ["x"] + GOOD[5:]}], "canvas_width": 8, "canvas_height": 8},
     r"pose_keypoints_2d\[4\] \(neck y\) must be a finite number"),
    ({"people": [{"pose_keypoints_2d": GOOD[:3] + [float("nan")] + GOOD[4:]}], "canvas_width": 8, "canvas_height": 8}, "finite"),
    ({"people": [{"pose_keypoints_2d": GOOD[:2] + [-1.0] + GOOD[3:]}], "canvas_width": 8, "canvas_height": 8}, "confidence of nose is negative"),
    ({"people": [{"pose_keypoints_2d": GOOD}]}, "no 'canvas_width'"),
    ({"people": [], "canvas_width": 0, "canvas_height": 8}, "'canvas_width' must be a positive integer"),
    ({"people": [], "canvas_width": 8, "canvas_height": "8"}, "'canvas_height' must be a positive integer"),
])
def test_malformed_json_gives_a_clear_value_error(data, message):
    with pytest.raises(ValueError, match=message):
        P.pose_from_json(data if isinstance(data, str) else json.dumps(data))


def test_load_pose_json_rejects_a_binary_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ValueError):
        P.load_pose_json(path)


# --- presets and editing ------------------------------------------------------------------------

@pytest.mark.parametrize("name", P.PRESET_POSES)
@pytest.mark.parametrize("size", [(512, 512), (768, 512), (512, 768), (64, 1024), (1024, 64)])
def test_presets_scale_to_the_canvas(name, size):
    width, height = size
    margin = 0.08
    pose = P.preset_pose(name, width, height, margin=margin)
    assert (pose.width, pose.height, pose.people) == (width, height, 1)
    kp = pose.person()
    seen = np.isfinite(kp).all(axis=1)
    assert seen.sum() >= 16 and seen[[JOINT_INDEX[j] for j in ("nose", "neck", "right_hip", "left_ankle")]].all()
    lo, hi = np.nanmin(kp, axis=0), np.nanmax(kp, axis=0)
    free = np.array([width, height]) * margin
    assert (lo >= free - 1e-6).all() and (hi <= np.array([width, height]) - free + 1e-6).all()
    # the figure fills the limiting dimension and is centred
    fill = (hi - lo) / (np.array([width, height]) * (1 - 2 * margin))
    assert fill.max() == pytest.approx(1.0)
    np.testing.assert_allclose((lo + hi) / 2, (width / 2, height / 2), atol=1e-6)
    # same shape on every canvas: normalised by its own height, the figure is identical
    ref = P.preset_pose(name, 512, 512, margin=margin).person()
    norm = lambda k: (k - np.nanmin(k, axis=0)) / (np.nanmax(k[:, 1]) - np.nanmin(k[:, 1]))  # noqa: E731
    np.testing.assert_allclose(norm(kp), norm(ref), atol=1e-9, equal_nan=True)
    assert np.asarray(pose.draw()).any()


def test_preset_poses_are_distinct_and_unknown_names_fail():
    assert set(P.PRESET_POSES) == {"standing", "arms up", "T-pose", "walking", "sitting"}
    poses = {n: P.preset_pose(n, 512, 512).person() for n in P.PRESET_POSES}
    up, standing = poses["arms up"], poses["standing"]
    assert up[JOINT_INDEX["right_wrist"], 1] < up[JOINT_INDEX["nose"], 1]       # hands above the head
    assert standing[JOINT_INDEX["right_wrist"], 1] > standing[JOINT_INDEX["neck"], 1]
    t = poses["T-pose"]
    assert abs(t[JOINT_INDEX["right_wrist"], 1] - t[JOINT_INDEX["right_shoulder"], 1]) < 1  # arms level
    with pytest.raises(ValueError, match="choose one of"):
        P.preset_pose("dab", 512, 512)


def test_move_joint_and_nearest_joint():
    pose = P.preset_pose("standing", 512, 512)
    x, y = pose.person()[JOINT_INDEX["left_wrist"]]
    assert pose.nearest_joint(x + 3, y - 2)[:2] == (0, JOINT_INDEX["left_wrist"])
    moved = pose.move_joint("left_wrist", 400.0, 100.0)
    assert tuple(moved.person()[JOINT_INDEX["left_wrist"]]) == (400.0, 100.0)
    assert tuple(pose.person()[JOINT_INDEX["left_wrist"]]) == (x, y)  # original untouched
    hidden = moved.move_joint("left_wrist", math.nan, math.nan)
    assert np.isnan(hidden.person()[JOINT_INDEX["left_wrist"]]).all()
    assert hidden.confidence[0, JOINT_INDEX["left_wrist"]] == 0
    assert P.empty_pose(8, 8).nearest_joint(1, 1) is None


# --- optional OpenPose detector: local weights only ---------------------------------------------

@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv(P.ANNOTATORS_ENV, raising=False)
    return tmp_path


def test_openpose_without_weights_names_what_to_download(empty_hf_cache):
    folder = empty_hf_cache / "annotators"
    folder.mkdir()
    assert P.openpose_weights_path(str(folder)) is None and not P.openpose_available(str(folder))
    with network_audit() as events, pytest.raises(ModelLoadError) as error:
        P.detect_pose(np.zeros((64, 64, 3), np.uint8), detector="openpose", annotators_dir=str(folder))
    assert events == []
    message = str(error.value)
    for needle in ("lllyasviel/Annotators", "body_pose_model.pth", P.ANNOTATORS_ENV, "mediapipe"):
        assert needle in message


def test_openpose_weights_are_found_in_the_folder_and_the_hf_cache(empty_hf_cache, monkeypatch):
    folder = empty_hf_cache / "annotators" / "annotator" / "ckpts"
    folder.mkdir(parents=True)
    (folder / "body_pose_model.pth").write_bytes(b"x")
    assert P.openpose_weights_path(str(empty_hf_cache / "annotators")) == folder / "body_pose_model.pth"
    monkeypatch.setenv(P.ANNOTATORS_ENV, str(empty_hf_cache / "annotators"))
    assert P.openpose_available()
    monkeypatch.delenv(P.ANNOTATORS_ENV)
    # the Hub cache layout: models--org--name/snapshots/<rev>/<file> + refs/main
    repo = empty_hf_cache / "hf-cache" / "models--lllyasviel--Annotators"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123" / "body_pose_model.pth").write_bytes(b"x")
    assert P.openpose_weights_path("") == repo / "snapshots" / "abc123" / "body_pose_model.pth"


@pytest.mark.slow  # imports controlnet-aux (~7 s)
def test_openpose_corrupt_weights_are_a_load_error(empty_hf_cache):
    (empty_hf_cache / "body_pose_model.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="Could not load OpenPose weights"):
        P.detect_pose_openpose(np.zeros((64, 64, 3), np.uint8), annotators_dir=str(empty_hf_cache))


@pytest.mark.slow
def test_openpose_runs_from_a_local_weights_file(empty_hf_cache):
    """controlnet-aux's OpenPose body network loads from a local file and runs, offline. The
    weights here are random (the real ones need a download), so only the plumbing is checked."""
    import torch
    from controlnet_aux.open_pose.model import bodypose_model

    torch.manual_seed(0)
    state = bodypose_model().state_dict()
    # the released checkpoint's keys lack the first component (see controlnet_aux util.transfer)
    torch.save({k.split(".", 1)[1]: v for k, v in state.items()}, empty_hf_cache / "body_pose_model.pth")
    with network_audit() as events:
        pose = P.detect_pose(skimage.data.astronaut(), detector="openpose", annotators_dir=str(empty_hf_cache))
    assert events == []
    assert pose.detector == "openpose" and (pose.width, pose.height) == (512, 512)
    assert pose.keypoints.ndim == 3 and pose.keypoints.shape[1:] == (18, 2)
    assert pose.found or "No person found" in pose.message
