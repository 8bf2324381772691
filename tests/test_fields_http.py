"""Every field of every tab reaches the request under its own name: each is sent a distinct
value over HTTP (by API parameter name, through the real server) and read back from the
infotext the result carries. A swap of two same-typed fields (batch size and count, width and
height, guidance start and end, two units) changes what comes back."""
from __future__ import annotations

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from pipelines.core.metadata import infotext_to_fields, parse_infotext, read_infotext
from pipelines.preprocess_extra import PREPROCESSORS
from pipelines.core.requests import FIELDS

SAMPLING = dict(prompt="a red circle", negative_prompt="blurry", scheduler="DDIM", steps=4, cfg=False, cfg_scale=4.5,
                eta=0.35, seed=1234, batch_size=2, batch_count=3, width=80, height=72, clip_skip=2, turbo="DeepCache 2",
                token_merging=0.3)


@pytest.fixture(scope="module")
def client(app_server):
    return Client(app_server.url, verbose=False)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fields")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / "image.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[16:40, 20:44] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    Image.fromarray(np.kron(np.eye(4)[:, :, None] * 255, np.ones((16, 16, 3))).astype(np.uint8)).save(folder / "squares.png")
    return folder


def declared_label(name: str, endpoint: str) -> str | None:
    """The label a parameter's widget must show: its field's ("unit2_weight": weight's; in a
    unit or a map preview, a preprocessor setting's before a request field's)."""
    in_unit = name.startswith("unit") and name[4].isdigit()
    name = name.split("_", 1)[1] if in_unit else name
    settings = {key: spec for p in PREPROCESSORS.values() for key, spec in p.params.items()}
    field = settings.get(name) if in_unit or endpoint.endswith("_preview") else None
    field = field or FIELDS.get(name)
    return field.label if field is not None and field.kind is not object else None


@pytest.mark.parametrize("endpoint", ["/txt2img", "/img2img", "/inpaint", "/controlnet", "/controlnet_cn0_preview"])
def test_every_api_parameter_is_the_widget_that_shows_its_field(client, endpoint):
    """The browser's view of the same binding: the slider labelled "Batch count" is the one
    whose value arrives as batch_count (a name given to the wrong widget fails here)."""
    parameters = client.view_api(print_info=False, return_format="dict")["named_endpoints"][endpoint]["parameters"]
    checked = [(p["parameter_name"], p["label"], declared_label(p["parameter_name"], endpoint)) for p in parameters]
    assert [(name, label) for name, label, expected in checked if expected and label != expected] == []
    assert sum(1 for *_, expected in checked if expected) >= 5


def read_back(gallery, sent: dict) -> dict:
    """What the first image's infotext says of each sent field, and the batch count from the
    number of images (A1111 writes batch size, not count)."""
    text = read_infotext(Image.open(gallery[0]["image"]))
    fields, notes = infotext_to_fields(parse_infotext(text))
    assert notes == []
    got = {name: fields.get(name) for name in sent}
    if "batch_count" in sent:
        got["batch_count"] = len(gallery) // fields.get("batch_size", 1)
    return got


def test_every_txt2img_field_comes_back_as_sent(client):
    gallery = client.predict(**SAMPLING, api_name="/txt2img")[1]
    assert read_back(gallery, SAMPLING) == SAMPLING


def test_every_img2img_field_comes_back_as_sent(client, pictures):
    sent = SAMPLING | dict(strength=0.6, resize_mode="resize and fill")
    gallery = client.predict(init_image=handle_file(str(pictures / "image.png")), **sent, api_name="/img2img")[1]
    assert read_back(gallery, sent) == sent


def test_every_inpaint_field_comes_back_as_sent(client, pictures):
    sent = SAMPLING | dict(steps=9, strength=0.9, resize_mode="resize and fill", mode="RePaint", mask_blur=5, invert_mask=True,
                           masked_content="fill", inpaint_area="only masked", padding=12, repaint_r=3, repaint_j=2)
    editor = {"background": handle_file(str(pictures / "image.png")), "layers": [], "composite": None}
    gallery = client.predict(image_and_mask=editor, mask_image=handle_file(str(pictures / "mask.png")), **sent,
                             **{f"unit{n}_image": None for n in (1, 2, 3)}, api_name="/inpaint")[1]
    assert read_back(gallery, sent) == sent


def unit_settings(text: str) -> dict:
    """A1111's ControlNet group "Module: canny, Model: m, Weight: 0.8, …" → {name: value}."""
    return dict(pair.split(": ", 1) for pair in text.split(", "))


def test_every_controlnet_field_of_every_unit_comes_back_as_sent(client, pictures, tiny_controlnet_dir):
    image = handle_file(str(pictures / "squares.png"))
    units = {1: dict(enabled=True, image=image, preprocessor="canny", low=40, high=170, model=str(tiny_controlnet_dir),
                     weight=0.8, start=0.1, end=0.9),
             2: dict(enabled=True, image=image, preprocessor="canny", low=60, high=120, model=str(tiny_controlnet_dir),
                     weight=0.3, start=0.2, end=0.7)}
    sent = SAMPLING | dict(strength=0.55, resize_mode="just resize", guess_mode=True)
    unit_values = {f"unit{n}_{name}": value for n, unit in units.items() for name, value in unit.items()}
    gallery = client.predict(use_init_image=True, init_image=image, **sent, **unit_values, unit3_image=None,
                             api_name="/controlnet")[1]
    assert read_back(gallery, sent) == sent
    params = parse_infotext(read_infotext(Image.open(gallery[0]["image"])))
    for n, unit in units.items():
        got = unit_settings(params[f"ControlNet {n - 1}"])
        assert (got["Module"], float(got["Weight"]), float(got["Guidance Start"]), float(got["Guidance End"]),
                int(got["low"]), int(got["high"])) == (unit["preprocessor"], unit["weight"], unit["start"], unit["end"],
                                                       unit["low"], unit["high"])
