"""Every training stage end to end on the CPU, two tiny steps each, into a temporary folder:
the same code the H100 runs, down to the saved fp16 diffusers folders the app loads."""
from __future__ import annotations

import pytest
import torch

from training import models, train
from training.common import lr_factor


def test_lr_schedule_warms_up_then_decays():
    assert lr_factor(0, warmup=100, progress=0.0) == pytest.approx(0.01)
    assert lr_factor(99, warmup=100, progress=0.0) == pytest.approx(1.0)
    assert lr_factor(500, warmup=100, progress=0.5) == pytest.approx(0.525)
    assert lr_factor(500, warmup=100, progress=1.0) == pytest.approx(0.05)


@pytest.mark.slow
def test_each_stage_trains_and_saves_a_loadable_model(tmp_path):
    from diffusers import ControlNetModel, StableDiffusionPipeline, UNet2DConditionModel

    tiny = ["--device", "cpu", "--max-steps", "2", "--batch-size", "2", "--pool-size", "4", "--out", str(tmp_path)]
    for stage in ("vae", "base", "inpaint", "controlnet-canny", "controlnet-pose"):
        stats = train.main(["--stage", stage, *tiny])
        assert stats["steps"] == 2 and stats["final_loss"] > 0
    stats = train.main(["--stage", "base", "--resume", *tiny])
    assert stats["resumed"]

    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / models.BASE, torch_dtype=torch.float32)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler" and not pipe.scheduler.config.clip_sample
    image = pipe("a red circle", height=64, width=64, num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (64, 64, 3)
    assert UNet2DConditionModel.from_pretrained(tmp_path / models.INPAINT / "unet").config.in_channels == 9
    for kind in models.CONTROLNETS.values():
        assert ControlNetModel.from_pretrained(tmp_path / kind).config.conditioning_channels == 3
    assert all(size < 16_000_000 for size in models.file_sizes(tmp_path).values())
