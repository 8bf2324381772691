"""Request validation: what a user (or an API client) may send, and the message they get."""
import math

import pytest
from PIL import Image

from pipelines.core.errors import RequestError
from pipelines.core.requests import Img2ImgRequest, Limits, Sampling, Txt2ImgRequest


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("steps", math.nan, "Steps must be a finite number"),
        ("steps", 0, "Steps must be between 1"),
        ("steps", 2.5, "Steps must be a whole number"),
        ("cfg_scale", math.inf, "CFG scale must be a finite number"),
        ("cfg_scale", 31, "CFG scale must be between 1 and 30"),
        ("eta", -0.1, "DDIM η must be between 0 and 1"),
        ("seed", -2, "Seed must be between -1"),
        ("batch_size", 0, "Batch size must be between 1"),
        ("scheduler", "Euler b", "Unknown scheduler 'Euler b'"),
        ("cfg", "yes", "CFG on/off must be true or false"),
        ("steps", "20", "Steps must be a number"),
    ],
)
def test_bad_sampling_values_are_rejected_with_a_message(field, value, message):
    with pytest.raises(RequestError, match=message):
        Sampling(**{field: value})


def test_json_style_integral_floats_are_accepted_as_ints():
    s = Sampling(steps=20.0, seed=3.0, batch_size=2.0, batch_count=1.0)
    assert (s.steps, s.seed, s.batch_size) == (20, 3, 2) and isinstance(s.steps, int)


def test_sizes_are_rounded_to_multiples_of_8_and_the_user_is_told():
    request = Limits().normalize(Txt2ImgRequest(prompt="x", width=500, height=301, sampling=Sampling(seed=1)))
    assert (request.width, request.height) == (504, 304)
    assert any("Width 500 rounded to 504" in n for n in request.notes)
    assert any("Height 301 rounded to 304" in n for n in request.notes)
    assert request.is_normalized


def test_sizes_steps_and_batches_over_the_host_limit_are_clamped_and_said():
    limits = Limits(max_width=256, max_height=256, max_steps=30, max_batch_size=2, max_batch_count=3)
    request = limits.normalize(Txt2ImgRequest(
        prompt="x", width=1024, height=64, sampling=Sampling(steps=80, batch_size=9, batch_count=9, seed=1)))
    assert (request.width, request.height) == (256, 64)
    assert (request.sampling.steps, request.sampling.batch_size, request.sampling.batch_count) == (30, 2, 3)
    assert len([n for n in request.notes if "limit" in n]) == 4


def test_random_seed_is_drawn_once_and_recorded():
    request = Limits().normalize(Txt2ImgRequest(prompt="x", sampling=Sampling(seed=-1)))
    assert 0 <= request.sampling.seed < 2**32
    assert Limits().normalize(request).sampling.seed == request.sampling.seed


def test_each_image_of_a_job_gets_the_next_seed():
    assert Sampling(seed=10, batch_size=2, batch_count=3).image_seeds() == [[10, 11], [12, 13], [14, 15]]


def test_img2img_without_an_image_says_to_upload_one():
    with pytest.raises(RequestError, match="needs an init image"):
        Img2ImgRequest(prompt="x")


def test_img2img_rejects_non_images_and_out_of_range_strength():
    with pytest.raises(RequestError, match="must be an image"):
        Img2ImgRequest(prompt="x", init_image="not an image")
    image = Image.new("RGB", (8, 8))
    for strength in (-0.1, 1.5, math.nan):
        with pytest.raises(RequestError, match="Denoising strength"):
            Img2ImgRequest(prompt="x", init_image=image, strength=strength)


def test_prompt_must_be_text():
    with pytest.raises(RequestError, match="Prompt must be text"):
        Txt2ImgRequest(prompt=None)


def test_requests_are_immutable():
    request = Txt2ImgRequest(prompt="x")
    with pytest.raises(Exception):
        request.prompt = "y"


@pytest.mark.parametrize("value", [0, 13, 1.5, float("nan"), "2"])
def test_clip_skip_outside_1_to_12_is_refused_with_a_sentence(value):
    with pytest.raises(RequestError, match="Clip skip"):
        Txt2ImgRequest(prompt="a", clip_skip=value)


def test_a_bad_lora_weight_is_refused_with_a_sentence():
    with pytest.raises(RequestError, match="Negative prompt: The LoRA weight"):
        Txt2ImgRequest(prompt="a", negative_prompt="<lora:x:heavy>")
