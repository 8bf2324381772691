"""Token merging (ToMe for SD, pipelines/token_merging.py) on the tiny models: off changes
nothing, the merge/unmerge maths, attention really runs on N − r tokens, the image stays
close, and the field travels through infotext, PNG info, grids and validation."""
from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.core.errors import RequestError
from pipelines.core.metadata import infotext_to_fields, parse_infotext, png_bytes, read_infotext
from pipelines.core.requests import Control, ControlUnit, Limits, Sampling, Txt2ImgRequest
from pipelines.token_merging import (Merge, grid_split, mean_into, merge_level, merged_model, merged_tokens,
                                     token_merging)
from pipelines.turbo import deep_cache
from tiny_sd import tiny_unet

SIZE = 64  # 8×8 latents: 64 tokens at the merged level of the tiny UNet


def txt2img(ratio=None, steps=8, seed=1, **kwargs) -> Txt2ImgRequest:
    fields = {} if ratio is None else {"token_merging": ratio}
    return Limits().normalize(Txt2ImgRequest(prompt="a red circle", width=SIZE, height=SIZE, **fields, **kwargs,
                                             sampling=Sampling(steps=steps, seed=seed, scheduler="DDIM")))


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image, dtype=np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255 ** 2 / ((a - b) ** 2).mean()))


class SelfAttentionTokens:
    """Token counts attn1 (the real module, not its stand-in) receives in the merged level's
    transformer blocks, and attn2's (cross-attention: its queries must stay all N)."""

    def __init__(self, unet):
        level = merge_level(unet)
        blocks = [*unet.down_blocks[level].attentions, *unet.up_blocks[len(unet.up_blocks) - 1 - level].attentions]
        self.attn1, self.attn2 = [], []
        self.handles = [module.register_forward_pre_hook(lambda m, args, seen=seen: seen.append(args[0].shape[1]))
                        for t2d in blocks for tb in t2d.transformer_blocks
                        for module, seen in ((tb.attn1, self.attn1), (tb.attn2, self.attn2))]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


# ----------------------------------------------------------------------------- the maths

def test_every_token_is_a_destination_or_a_source_once_on_odd_grids_too():
    for h, w in ((8, 8), (7, 9), (1, 5), (64, 64)):
        dst, src = grid_split(h, w)
        assert torch.equal(torch.cat([dst, src]).sort().values, torch.arange(h * w)), (h, w)
        assert len(dst) == (h // 2) * (w // 2)


def test_merge_then_unmerge_gives_merged_sources_their_destinations_value_and_keeps_the_rest():
    torch.manual_seed(0)
    h = w = 8
    x = torch.randn(2, h * w, 16)
    dst, src = grid_split(h, w)
    x[:, src[:5]] = x[:, dst[:5]] * 3.0  # the same direction as a destination: cosine 1, merged first
    merge = Merge(x, h, w, 20)
    merged = merge.merge(x)
    assert merged.shape == (2, h * w - 20, 16)
    back = merge.unmerge(merged)
    moved = src[merge.merged]  # (B, r) token indices of merged sources
    assert set(src[:5].tolist()) <= set(moved[0].tolist()) and set(src[:5].tolist()) <= set(moved[1].tolist())
    for b in range(2):
        into = dst[merge.into[b]]
        assert torch.equal(back[b, moved[b]], back[b, into])  # a merged source takes its destination's value
        kept = src[merge.kept[b]]
        assert torch.equal(back[b, kept], x[b, kept])  # unmerged sources pass through untouched
        for d in into.unique():  # a destination holds the mean of itself and what merged into it
            group = torch.cat([d[None], moved[b][into == d]])
            torch.testing.assert_close(back[b, d], x[b, group].mean(0))


def test_the_dense_mean_used_on_cuda_equals_the_scatter_mean():
    torch.manual_seed(0)
    dests, moving, into = torch.randn(2, 16, 8), torch.randn(2, 30, 8), torch.randint(0, 16, (2, 30))
    into[:, :5] = 3  # one destination takes many
    torch.testing.assert_close(mean_into(dests, moving, into, dense=True), mean_into(dests, moving, into, dense=False))


def test_no_merge_is_the_identity():
    x = torch.randn(2, 63, 8)
    merge = Merge(x, 7, 9, 0)
    assert torch.equal(merge.unmerge(merge.merge(x)), x)


@torch.no_grad()
def test_self_attention_sees_n_minus_r_tokens_and_cross_attention_all_n():
    unet = tiny_unet().eval()
    x, c, t = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32), torch.tensor(500)
    for ratio, expected in ((0.5, 32), (0.25, 48), (0.9, 16)):  # 0.9: r stops at the 48 sources
        assert merged_tokens(64, ratio, 8, 8) == expected
        with SelfAttentionTokens(unet) as seen, token_merging(unet, ratio) as merger:
            unet(x, t, c)
        assert merger.merged_calls == 1
        assert seen.attn1 == [expected] * 3 and seen.attn2 == [64] * 3  # one down, two up transformer blocks
    assert "forward" not in unet.__dict__  # nothing left on the UNet
    with SelfAttentionTokens(unet) as seen:
        unet(x, t, c)
    assert seen.attn1 == [64] * 3


@torch.no_grad()
def test_sdxl_merges_at_its_first_level_with_attention():
    """SDXL's highest resolution has no transformer blocks: the merge acts one level down."""
    from tiny_sdxl import HIDDEN_1, HIDDEN_2, tiny_xl_unet

    unet = tiny_xl_unet().eval()
    assert merge_level(unet) == 1
    x, c = torch.randn(2, 4, 8, 8), torch.randn(2, 77, HIDDEN_1 + HIDDEN_2)
    added = {"text_embeds": torch.randn(2, HIDDEN_2), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    plain = unet(x, torch.tensor(300), c, added_cond_kwargs=added).sample
    with SelfAttentionTokens(unet) as seen, token_merging(unet, 0.5):
        merged = unet(x, torch.tensor(300), c, added_cond_kwargs=added).sample
    assert set(seen.attn1) == {8} and set(seen.attn2) == {16}  # 4×4 tokens at level 1: r = 8
    assert not torch.equal(merged, plain)


def test_an_sdxl_model_in_the_manager_merges_and_says_so(tmp_path):
    from pipelines.manager import PipelineManager
    from tiny_sdxl import save_tiny_xl_model

    xl = PipelineManager(device="cpu")
    xl.load_base(str(save_tiny_xl_model(tmp_path / "tiny-sdxl")))
    off = pixels(xl.run(txt2img(steps=4)))
    with SelfAttentionTokens(xl.pipeline("txt2img").unet) as seen:
        result = xl.run(txt2img(0.5, steps=4))
    assert set(seen.attn1) == {8} and len(seen.attn1) == 4 * 3  # 4 steps × (1 down + 2 up blocks), 16 → 8 tokens
    assert "Token merging ratio: 0.5" in result.images[0].infotext
    assert not np.array_equal(pixels(result), off)


@torch.no_grad()
def test_deep_cache_over_the_merged_view_merges_on_full_and_shallow_calls():
    unet = tiny_unet().eval()
    x, c, t = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32), torch.tensor(500)
    with token_merging(unet, 0.5):
        merged = unet(x, t, c).sample
    with SelfAttentionTokens(unet) as seen, deep_cache(unet, 2, model=merged_model(unet, 0.5)) as stepper:
        full, shallow = unet(x, t, c).sample, unet(x, t, c).sample
    assert (stepper.full_calls, stepper.shallow_calls) == (1, 1)
    assert torch.equal(full, merged)
    torch.testing.assert_close(shallow, merged, rtol=1e-5, atol=1e-6)
    assert seen.attn1 == [32] * 4  # full: 1 down and 2 up blocks; shallow: the last up block's last layer


# ----------------------------------------------------------------------------- the manager

def test_ratio_0_is_bit_identical_to_a_request_without_the_field_before_and_after_a_merged_one(manager):
    before = pixels(manager.run(txt2img()))
    assert np.array_equal(pixels(manager.run(txt2img(0.0))), before)
    manager.run(txt2img(0.5))
    assert np.array_equal(pixels(manager.run(txt2img())), before)
    assert "forward" not in manager.pipeline("txt2img").unet.__dict__


def test_ratio_half_changes_the_image_a_little_and_the_same_seed_gives_it_again(manager):
    """The bar: measured on this tiny model (8 DDIM steps, 64²), ratios 0.3 / 0.5 / 0.9 give
    49 / 46 / 47 dB PSNR vs off, another seed ~12 dB (a different picture). 35 dB says "the
    same picture, slightly changed". The tiny model's attention weighs little in its output
    (a scrambled unmerge also stays near 46 dB here): the maths is guarded by the tests above
    and below, and the demo model's probes in bench/tome_quality.py measure the quality."""
    off = pixels(manager.run(txt2img()))
    on = pixels(manager.run(txt2img(0.5)))
    other_seed = pixels(manager.run(txt2img(seed=2)))
    assert not np.array_equal(on, off)
    assert psnr(on, off) > 35 > psnr(other_seed, off) + 15
    assert np.array_equal(pixels(manager.run(txt2img(0.5))), on)


@torch.no_grad()
def test_on_a_grid_constant_over_each_window_merging_three_quarters_changes_no_attention_output():
    """Each 2×2 window's four tokens equal: its three sources merge into its destination (cosine
    1), attention over one token per window weighs every key alike (softmax's common factor 4
    cancels), and unmerge must hand each token its own window's output: exact, up to rounding.
    A wrong index anywhere (a token given another window's output) breaks it."""
    from pipelines.token_merging import MergedSelfAttention, _Grid

    torch.manual_seed(0)
    attn = tiny_unet().down_blocks[0].attentions[0].transformer_blocks[0].attn1.eval()
    windows = torch.randn(2, 4, 4, 32)  # (B, h/2, w/2, C)
    x = windows.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2).reshape(2, 64, 32)
    grid = _Grid()
    grid.size = (8, 8)
    merged = MergedSelfAttention(attn, 0.75, grid, 0)(x)
    torch.testing.assert_close(merged, attn(x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(merged, merged.roll(2, dims=1))  # outputs differ from window to window


def test_the_ratio_is_written_as_a1111_writes_it_and_png_info_reads_it_back(manager):
    text = manager.run(txt2img(0.5)).images[0].infotext
    assert "Token merging ratio: 0.5" in text
    png = Image.open(io.BytesIO(png_bytes(Image.new("RGB", (8, 8)), text)))
    assert infotext_to_fields(parse_infotext(read_infotext(png)))[0]["token_merging"] == 0.5
    plain = manager.run(txt2img()).images[0].infotext
    assert "Token merging" not in plain
    assert infotext_to_fields(parse_infotext(plain))[0]["token_merging"] == 0.0  # a lossy option left on must not linger
    a1111 = ("a cat\nNegative prompt: ugly\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, "
             "Model: v1-5, Token merging ratio: 0.3, Version: v1.10.1")
    fields, notes = infotext_to_fields(parse_infotext(a1111))
    assert fields["token_merging"] == 0.3 and notes == []


def test_with_deep_cache_and_controlnet_both_act_and_the_infotext_says_so(manager, tiny_controlnet_dir):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
    control = Control(units=(ControlUnit(model=str(tiny_controlnet_dir), image=image),))
    for extra in ({"turbo": "DeepCache 2"}, {"control": control}):
        off = pixels(manager.run(txt2img(**extra)))
        manager.turbo_counts.clear()
        result = manager.run(txt2img(0.5, **extra))
        assert "Token merging ratio: 0.5" in result.images[0].infotext
        if "turbo" in extra:
            assert "Turbo: DeepCache 2" in result.images[0].infotext and manager.turbo_counts["shallow_calls"] == 4
        else:
            assert manager.turbo_counts == {"merged_calls": 8, "other_calls": 0}
        assert not np.array_equal(pixels(result), off)
        assert psnr(pixels(result), off) > 25


def test_on_the_fast_path_each_ratio_is_its_own_fast_call_with_the_eager_image(tiny_model_dir, manager):
    """With the fast path (CPU here: no graphs, a stand-in compiler) merged calls go through a
    FastCall per ratio, which a GPU serves by CUDA graphs; the maths is the same."""
    from pipelines.fast_path import FastPath
    from pipelines.manager import PipelineManager

    fast = PipelineManager(device="cpu", fast_path=FastPath(compile="full", channels_last=False, fuse_qkv=False,
                                                           compiler=lambda fn: fn))
    fast.load_base(str(tiny_model_dir))
    for ratio in (0.5, 0.3):
        assert np.array_equal(pixels(fast.run(txt2img(ratio))), pixels(manager.run(txt2img(ratio))))
    served = {call.name: sum(call.served.values()) for call in fast.fast_runtime.calls}
    assert served["unet tome 0.5"] == 8 and served["unet tome 0.3"] == 8
    assert served.get("unet", 0) == 0  # the plain UNet call never ran for these requests
    fast.fast_runtime.close()


def test_controlnet_on_the_fast_path_with_its_overlap_learned_gives_the_eager_images_with_and_without_merging(
        tiny_model_dir, tiny_controlnet_dir, manager):
    """Plain ControlNet requests run the UNet's first half beside the ControlNet
    (control_overlap.py); a merged request in between must not take that half (it is not
    merged), and the plain request after it must overlap again, with its own image."""
    from test_fast_path import FakeCompiler, fast_manager

    fast = fast_manager(tiny_model_dir, FakeCompiler())
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
    control = Control(units=(ControlUnit(model=str(tiny_controlnet_dir), image=image),))
    plain, merged = txt2img(control=control), txt2img(0.5, control=control)
    fast.run(plain)
    assert fast.fast_runtime.wait_idle(60)
    assert np.array_equal(pixels(fast.run(plain)), pixels(manager.run(plain)))
    overlapped = fast.fast_runtime.overlap.overlapped
    assert overlapped > 0
    joined = fast.fast_runtime.overlap.joined
    assert joined == 0 and fast.fast_runtime.wait_idle(60)  # the whole step as one graph, built between requests
    # The merged UNet does not take that step's noise prediction (its own UNet differs); it gets
    # the step's residuals, which it copies before any other graph could overwrite them.
    assert np.array_equal(pixels(fast.run(merged)), pixels(manager.run(merged)))
    assert fast.fast_runtime.overlap.joined == 1
    assert fast.fast_runtime.overlap.overlapped == overlapped + 1  # one step launched in vain, then none
    assert np.array_equal(pixels(fast.run(plain)), pixels(manager.run(plain)))
    assert fast.fast_runtime.overlap.overlapped > overlapped + 1  # the pair learned again
    assert fast.fast_runtime.overlap.joined > 1  # and the joint step served again
    fast.fast_runtime.close()


def test_a_client_sending_many_ratios_leaves_only_the_last_few_views_and_their_calls():
    from pipelines.token_merging import KEPT_RATIOS, TokenMerging

    unet = tiny_unet()
    for step in range(20):
        TokenMerging.of(unet, 0.3 + step / 1000)
    assert list(unet.__dict__["_sd_studio_tome"]) == [0.3 + step / 1000 for step in range(20 - KEPT_RATIOS, 20)]
    assert TokenMerging.of(unet, 0.319) is TokenMerging.of(unet, 0.319)


def test_requests_batch_together_only_with_the_same_ratio(manager):
    from pipelines.batching import batch_key

    pipe = manager.pipeline("txt2img")
    keys = [batch_key(pipe, manager.family, txt2img(ratio)) for ratio in (None, 0.0, 0.5, 0.5, 0.3)]
    assert None not in keys
    assert keys[0] == keys[1] and keys[2] == keys[3] and len({keys[0], keys[2], keys[4]}) == 3


# ----------------------------------------------------------------------------- the field

@pytest.mark.parametrize("value, message", [
    (float("nan"), "Token merging ratio must be a finite number"),
    (0.95, "Token merging ratio must be between 0 and 0.9, got 0.95"),
    (-0.1, "Token merging ratio must be between 0 and 0.9, got -0.1"),
    ("half", "Token merging ratio must be a number"),
])
def test_bad_ratios_are_refused_with_a_sentence(value, message):
    with pytest.raises(RequestError, match=message):
        Txt2ImgRequest(prompt="a", token_merging=value)


def test_token_merging_is_a_grid_axis():
    from pipelines.core.grid import axis_values, plan_grid

    base = Txt2ImgRequest(prompt="a red circle", width=64, height=64, sampling=Sampling(seed=3))
    plan = plan_grid(base, axis_values("Token merging ratio", "0, 0.3, 0.5"), None)
    assert [cell.token_merging for cell in plan.cells] == [0.0, 0.3, 0.5]
    with pytest.raises(RequestError, match="Token merging ratio must be between 0 and 0.9"):
        plan_grid(base, axis_values("Token merging ratio", "0.5, 1"), None)


def test_a_request_without_the_field_is_unchanged_by_it():
    plain = Txt2ImgRequest(prompt="a")
    assert plain.token_merging == 0.0 and replace(plain, token_merging=0.0) == plain
