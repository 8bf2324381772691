"""Infotext: written into PNGs, read back, and compatible with A1111's format."""
from io import BytesIO

from PIL import Image

from pipelines.core.metadata import build_infotext, infotext_to_fields, parse_infotext, png_bytes, read_infotext
from pipelines.core.schedulers import SCHEDULER_NAMES


def test_infotext_round_trips_through_a_png():
    text = build_infotext(
        "a red circle, centred\nsecond line", "blurry",
        {"Steps": 20, "Sampler": "DPM++ 2M Karras", "CFG scale": 7.5, "Seed": 4294967295, "Size": "128x96",
         "Model": "demo: v1", "Denoising strength": 0.35, "Eta": None},
    )
    image = Image.open(BytesIO(png_bytes(Image.new("RGB", (4, 4), "red"), text)))
    parsed = parse_infotext(read_infotext(image))
    assert parsed["Prompt"] == "a red circle, centred\nsecond line"
    assert parsed["Negative prompt"] == "blurry"
    assert parsed["Model"] == "demo: v1"  # a value with a colon survives (JSON-quoted)
    assert "Eta" not in parsed  # None values are left out
    fields, notes = infotext_to_fields(parsed, SCHEDULER_NAMES)
    assert fields == {
        "prompt": "a red circle, centred\nsecond line", "negative_prompt": "blurry", "steps": 20, "cfg_scale": 7.5,
        "seed": 4294967295, "strength": 0.35, "width": 128, "height": 96, "scheduler": "DPM++ 2M Karras",
        # no variation seed and no hires fix in the text: those are sent as off; "Denoising
        # strength" is both img2img's strength and the hires pass's
        "subseed_strength": 0.0, "enable_hr": False, "denoising_strength": 0.35,
        "clip_skip": 1,  # absent = 1: A1111 writes Clip skip only when it is not 1
        "turbo": "Off",  # absent = off: a lossy option is written only when on
        "token_merging": 0.0,  # absent = off, as A1111 writes it
    }
    assert notes == []


def test_a1111_infotext_with_separate_schedule_type_maps_to_our_scheduler():
    text = ("masterpiece, 1girl\nNegative prompt: lowres\nSteps: 30, Sampler: DPM++ 2M, Schedule type: Karras, "
            'CFG scale: 6, Seed: 42, Size: 512x768, Model hash: 6ce0161689, Model: v1-5, Lora hashes: "a: 1, b: 2", Version: v1.9.4')
    parsed = parse_infotext(text)
    assert parsed["Lora hashes"] == "a: 1, b: 2"
    fields, notes = infotext_to_fields(parsed, SCHEDULER_NAMES)
    assert fields["scheduler"] == "DPM++ 2M Karras"
    assert (fields["width"], fields["height"], fields["steps"]) == (512, 768, 30)


def test_unknown_sampler_is_reported_not_guessed():
    fields, notes = infotext_to_fields(parse_infotext("x\nSteps: 5, Sampler: Restart, Seed: 1"), SCHEDULER_NAMES)
    assert "scheduler" not in fields
    assert "Restart" in notes[0]


def test_cfg_off_is_recorded_and_read_back():
    text = build_infotext("x", "", {"Steps": 5, "Sampler": "Euler", "CFG scale": 7, "CFG": "off", "Seed": 1})
    fields, _ = infotext_to_fields(parse_infotext(text), SCHEDULER_NAMES)
    assert fields["cfg"] is False


def test_image_without_parameters_reads_as_none():
    buffer = BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    assert read_infotext(Image.open(buffer)) is None


def test_prompt_only_infotext_keeps_the_prompt():
    assert parse_infotext("just a prompt")["Prompt"] == "just a prompt"


def test_clip_skip_is_read_back_from_a1111_infotext():
    fields, _ = infotext_to_fields(parse_infotext("a cat\nSteps: 20, Sampler: Euler a, Clip skip: 2, Seed: 1"), SCHEDULER_NAMES)
    assert fields["clip_skip"] == 2
