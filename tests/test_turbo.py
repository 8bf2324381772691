"""Turbo (DeepCache-style step-feature caching, pipelines/turbo.py) on the tiny model: off
changes nothing, on it skips the deep UNet on the cached steps and the image stays close,
and the infotext says so and reads back."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.core.errors import RequestError
from pipelines.core.metadata import infotext_to_fields, parse_infotext
from pipelines.core.requests import ControlUnit, Control, InpaintRequest, Limits, Sampling, Txt2ImgRequest
from pipelines.turbo import deep_cache
from tiny_sd import save_tiny_inpaint_unet, tiny_unet

SIZE = 64


def txt2img(turbo="Off", steps=12, seed=1, **kwargs) -> Txt2ImgRequest:
    return Limits().normalize(Txt2ImgRequest(prompt="a red circle", width=SIZE, height=SIZE, turbo=turbo,
                                             sampling=Sampling(steps=steps, seed=seed, scheduler="DDIM"), **kwargs))


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image, dtype=np.float64)


class DeepBlockCalls:
    """Counts runs of the UNet's mid block: it runs on full calls only."""

    def __init__(self, unet):
        self.count = 0
        self.handle = unet.mid_block.register_forward_hook(lambda *args: setattr(self, "count", self.count + 1))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_turbo_off_is_bit_identical_before_and_after_a_turbo_request(manager):
    before = pixels(manager.run(txt2img()))
    manager.run(txt2img("DeepCache 2"))
    after = pixels(manager.run(txt2img()))
    assert np.array_equal(before, after)
    assert "forward" not in manager.pipeline("txt2img").unet.__dict__  # nothing left on the shared UNet


def test_deep_cache_changes_the_image_less_than_a_neighbouring_seed_does(manager):
    """The bound: DeepCache reuses deep features a step or two old, so its image must be
    much nearer the full run's than another seed's image is (a different image of the same
    prompt); a quarter of that distance is the bar, per image and per N."""
    off = pixels(manager.run(txt2img()))
    other_seed = np.abs(pixels(manager.run(txt2img(seed=2))) - off).mean()
    for mode in ("DeepCache 2", "DeepCache 3"):
        on = pixels(manager.run(txt2img(mode)))
        change = np.abs(on - off).mean()
        assert 0 < change < 0.25 * other_seed, (mode, change, other_seed)


def test_deep_cache_3_runs_the_deep_unet_on_every_third_of_30_steps(manager):
    unet = manager.pipeline("txt2img").unet
    manager.turbo_counts.clear()
    with DeepBlockCalls(unet) as calls:
        manager.run(txt2img("DeepCache 3", steps=30))
    assert calls.count == 10  # CFG batches cond and uncond: one UNet call per step
    assert manager.turbo_counts == {"full_calls": 10, "shallow_calls": 20, "other_calls": 0}
    with DeepBlockCalls(unet) as calls:
        manager.run(txt2img(steps=30))
    assert calls.count == 30


def test_turbo_is_written_in_the_infotext_and_png_info_reads_it_back(manager):
    text = manager.run(txt2img("DeepCache 3")).images[0].infotext
    assert "Turbo: DeepCache 3" in text
    assert infotext_to_fields(parse_infotext(text))[0]["turbo"] == "DeepCache 3"
    plain = manager.run(txt2img()).images[0].infotext
    assert "Turbo" not in plain
    assert infotext_to_fields(parse_infotext(plain))[0]["turbo"] == "Off"  # a lossy option left on must not linger


def test_an_unknown_turbo_mode_is_refused_with_the_choices():
    with pytest.raises(RequestError, match="Unknown turbo 'DeepCache 9'. Choose one of: Off, DeepCache 2, DeepCache 3"):
        Txt2ImgRequest(prompt="a", turbo="DeepCache 9")


@torch.no_grad()
def test_a_shallow_call_on_the_full_calls_input_reproduces_it_exactly_controlnet_residuals_included():
    """The replaying view runs diffusers' forward with the deep blocks handing back what the
    recording view kept: on the same input, the shallow path must give the full output."""
    unet = tiny_unet().eval()
    x, c, t = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32), torch.tensor(500)
    shapes = [(2, 32, 8, 8), (2, 32, 8, 8), (2, 32, 4, 4), (2, 64, 4, 4), (2, 64, 4, 4)]
    residuals = dict(down_block_additional_residuals=tuple(torch.randn(s) for s in shapes),
                     mid_block_additional_residual=torch.randn(2, 64, 4, 4))
    for kwargs in ({}, residuals):
        reference = unet(x, t, c, **kwargs).sample
        with deep_cache(unet, 3) as stepper:
            full, shallow = unet(x, t, c, **kwargs).sample, unet(x, t, c, **kwargs).sample
        assert (stepper.full_calls, stepper.shallow_calls) == (1, 1)
        assert torch.equal(full, reference)
        torch.testing.assert_close(shallow, reference, rtol=1e-5, atol=1e-6)
        changed = unet(x * 0.9, t, c, **kwargs).sample
        with deep_cache(unet, 3):
            unet(x, t, c, **kwargs)
            cached = unet(x * 0.9, t, c, **kwargs).sample
        assert not torch.allclose(cached, changed)  # the deep features were really reused


def test_turbo_acts_in_controlnet_repaint_and_inpainting_model_modes(manager, tiny_controlnet_dir, tmp_path):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (16, 16, 48, 48))
    control = Control(units=(ControlUnit(model=str(tiny_controlnet_dir), image=image),))
    base = dict(prompt="a red circle", width=SIZE, height=SIZE, sampling=Sampling(steps=8, seed=3, scheduler="DDIM"))
    requests = {
        "controlnet": Txt2ImgRequest(**base, control=control),
        "repaint": InpaintRequest(**base, init_image=image, mask=mask),
        "inpainting model": InpaintRequest(**base, init_image=image, mask=mask, mode="inpainting model",
                                           inpaint_model=str(save_tiny_inpaint_unet(tmp_path / "nine"))),
        "controlnet inpaint": InpaintRequest(**base, init_image=image, mask=mask, control=control),
    }
    for name, request in requests.items():
        off = manager.run(Limits().normalize(request))
        manager.turbo_counts.clear()
        on = manager.run(Limits().normalize(replace(request, turbo="DeepCache 2")))
        assert manager.turbo_counts["shallow_calls"] > 0 and manager.turbo_counts["other_calls"] == 0, name
        assert "Turbo: DeepCache 2" in on.images[0].infotext, name
        assert not np.array_equal(pixels(on), pixels(off)), name


def test_on_the_fast_path_full_and_shallow_calls_are_their_own_fast_calls_with_the_same_image(tiny_model_dir, manager):
    """With the fast path (CPU here: no graphs, a stand-in compiler) the turbo calls go
    through FastCalls of their own, which a GPU serves by CUDA graphs; the maths is the same."""
    from pipelines.fast_path import FastPath
    from pipelines.manager import PipelineManager

    fast = PipelineManager(device="cpu", fast_path=FastPath(compile="full", channels_last=False, fuse_qkv=False,
                                                           compiler=lambda fn: fn))
    fast.load_base(str(tiny_model_dir))
    request = txt2img("DeepCache 3")
    assert np.array_equal(pixels(fast.run(request)), pixels(manager.run(request)))
    served = {call.name: sum(call.served.values()) for call in fast.fast_runtime.calls}
    assert served["unet turbo full"] == 4 and served["unet turbo shallow"] == 8  # 12 steps
    assert served.get("unet", 0) == 0  # the plain UNet call never ran for this request
    fast.fast_runtime.close()


def test_turbo_is_a_grid_axis_whose_cells_compare_off_with_deep_cache():
    from pipelines.core.grid import axis_values, plan_grid

    base = Txt2ImgRequest(prompt="a red circle", width=64, height=64, sampling=Sampling(seed=3))
    plan = plan_grid(base, axis_values("Turbo", "Off, DeepCache 2, DeepCache 3"), None)
    assert [cell.turbo for cell in plan.cells] == ["Off", "DeepCache 2", "DeepCache 3"]
    with pytest.raises(RequestError, match="Turbo|turbo"):
        plan_grid(base, axis_values("Turbo", "DeepCache 7"), None)


@torch.no_grad()
def test_a_controlnet_runs_its_down_and_mid_blocks_on_full_steps_only_and_exactly_on_them():
    from diffusers import ControlNetModel

    unet = tiny_unet().eval()
    controlnet = ControlNetModel.from_unet(unet).eval()
    for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
        torch.nn.init.normal_(conv.weight, std=0.5)  # 'trained': zero convs would hide any error
    x, c, cond = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32), torch.rand(2, 3, 64, 64)

    def step(scale=0.7):
        down, mid = controlnet(x, torch.tensor(500), c, cond, scale, return_dict=False)
        return unet(x, torch.tensor(500), c, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample

    reference = step()
    with DeepBlockCalls(controlnet) as calls, deep_cache(unet, 3, controlnets=[controlnet]):
        outs = [step() for _ in range(6)]
    assert calls.count == 2  # steps 1 and 4
    assert torch.equal(outs[0], reference)
    for out in outs[1:]:  # the same input every step: shallow steps rebuild it from what was kept
        torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    assert "forward" not in controlnet.__dict__


@torch.no_grad()
def test_an_sdxl_unet_with_added_conditioning_is_cached_and_rebuilt_exactly():
    """SDXL's last up block has no transformers and its UNet takes added conditioning (pooled
    text, size ids): the shallow path reads both like the full forward does."""
    from tiny_sdxl import HIDDEN_1, HIDDEN_2, tiny_xl_unet

    unet = tiny_xl_unet().eval()
    x, c = torch.randn(2, 4, 8, 8), torch.randn(2, 77, HIDDEN_1 + HIDDEN_2)
    added = {"text_embeds": torch.randn(2, HIDDEN_2), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    reference = unet(x, torch.tensor(300), c, added_cond_kwargs=added).sample
    with deep_cache(unet, 2) as stepper:
        full, shallow = (unet(x, torch.tensor(300), c, added_cond_kwargs=added).sample for _ in range(2))
    assert (stepper.full_calls, stepper.shallow_calls, stepper.other_calls) == (1, 1, 0)
    assert torch.equal(full, reference)
    torch.testing.assert_close(shallow, reference, rtol=1e-5, atol=1e-5)


def test_a_turbo_request_is_never_batched_with_others_so_its_turbo_acts(manager):
    assert manager._batch_key(txt2img()) is not None
    assert manager._batch_key(txt2img("DeepCache 2")) is None


def test_turbo_and_token_merging_views_trace_whole_and_are_served_compiled_with_the_same_images(
        tiny_model_dir, tiny_controlnet_dir, manager):
    """The background worker compiles the lossy options' views as it compiles the plain UNet
    (after it): dynamo must trace each view whole (fullgraph, as on a GPU; here its eager
    backend, so the maths is unchanged) and the compiled calls give the plain manager's images."""
    from pipelines.fast_path import FastPath
    from pipelines.manager import PipelineManager

    compiled = []

    def dynamo(fn):
        compiled.append(fn)
        return torch.compile(fn, fullgraph=True, dynamic=False, backend="eager")

    fast = PipelineManager(device="cpu", fast_path=FastPath(compile="full", channels_last=False, fuse_qkv=False,
                                                           compiler=dynamo))
    fast.load_base(str(tiny_model_dir))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
    control = Control(units=(ControlUnit(model=str(tiny_controlnet_dir), image=image),))
    requests = [txt2img("DeepCache 3"), txt2img(token_merging=0.5), txt2img("DeepCache 2", token_merging=0.5),
                txt2img("DeepCache 2", control=control)]
    for request in requests:  # the views' calls repeat inside each request: their compiles are queued
        fast.run(request)
    assert fast.fast_runtime.wait_idle(300)
    for request in requests:
        assert np.array_equal(pixels(fast.run(request)), pixels(manager.run(request)))
    views = [call for call in fast.fast_runtime.calls if call.lossy and call.served]
    assert {call.name for call in views} == {"unet turbo full", "unet turbo shallow", "unet tome 0.5",
                                             "controlnet turbo full", "controlnet turbo shallow"}
    for call in views:
        assert call.served["compiled"] >= 2, (call.name, call.served)  # the last round ran compiled
    # What the worker compiled (and ran, concurrently with requests) are twins: Python state of
    # their own, the same weights. A request's eager calls use the views kept on the models.
    from pipelines.token_merging import TokenMerging
    from pipelines.turbo import DeepCache

    unet = fast.pipeline("txt2img").unet
    in_use = [unet.__dict__["_sd_studio_turbo"], *unet.__dict__["_sd_studio_tome"].values()]
    owners = [dict(zip(fn.__code__.co_freevars, fn.__closure__ or ())).get("self") for fn in compiled]
    twins = [cell.cell_contents for cell in owners
             if cell is not None and isinstance(cell.cell_contents, (DeepCache, TokenMerging))]
    assert len(twins) >= len(views)
    for twin in twins:
        assert all(twin is not used for used in in_use)
        if isinstance(twin, DeepCache):
            assert all(twin.kept is not used.kept and twin.feed is not used.feed
                       for used in in_use if isinstance(used, DeepCache))
        else:
            assert all(twin.grid is not used.grid for used in in_use if isinstance(used, TokenMerging))
            assert twin.view.conv_in.module.weight is unet.conv_in.weight
    fast.fast_runtime.close()
