"""The field declarations themselves: every default is a value its own field accepts, widgets
have what they need, and requests are assembled from flat values by name."""
from __future__ import annotations

import pytest
from PIL import Image

from pipelines.core.errors import RequestError
from pipelines.core.fields import a1111_fields, assemble
from pipelines.core.requests import FIELDS, Img2ImgRequest, Txt2ImgRequest


@pytest.mark.parametrize("name", [n for n, f in FIELDS.items() if f.kind is not object])
def test_every_declared_default_is_a_value_its_field_accepts(name):
    field = FIELDS[name]
    assert field.check(field.default) == field.default
    if field.numeric:  # a slider needs a range and a step
        assert field.minimum <= field.default <= field.maximum and field.step


def test_a_request_is_assembled_from_flat_values_by_name_nested_sampling_included():
    request = assemble(Txt2ImgRequest, {"prompt": "a", "steps": 7, "batch_count": 3, "batch_size": 2, "width": 96, "seed": None})
    assert (request.prompt, request.width, request.height) == ("a", 96, 512)
    assert (request.sampling.steps, request.sampling.batch_size, request.sampling.batch_count) == (7, 2, 3)
    assert request.sampling.seed == -1  # an empty widget means the default


def test_a_misspelt_or_foreign_field_is_refused_not_dropped():
    with pytest.raises(RequestError, match="Unknown field.*stength"):
        assemble(Txt2ImgRequest, {"prompt": "a", "stength": 0.5})
    with pytest.raises(RequestError, match="Unknown field.*strength"):  # txt2img has no strength
        assemble(Txt2ImgRequest, {"strength": 0.5})
    with pytest.raises(RequestError, match="Denoising strength must be between 0 and 1"):
        assemble(Img2ImgRequest, {"strength": 1.5}, init_image=Image.new("RGB", (8, 8)))


def test_a1111_keys_are_unique_and_name_the_usual_fields():
    keys = a1111_fields(FIELDS)
    assert len(keys) == sum(1 for f in FIELDS.values() if f.a1111)
    assert {k: keys[k].name for k in ("cfg_scale", "denoising_strength", "batch_size", "n_iter", "sampler_name")} == {
        "cfg_scale": "cfg_scale", "denoising_strength": "strength", "batch_size": "batch_size", "n_iter": "batch_count",
        "sampler_name": "scheduler"}
