"""The fast path's cut forwards (pipelines/split_forward.py) give diffusers' own results bit
for bit: the UNet's two halves around the ControlNet residuals, and the ControlNet started
from a hint embedding computed once."""
from __future__ import annotations

import pytest
import torch
from diffusers import ControlNetModel

from pipelines import split_forward
from tiny_sd import tiny_unet
from tiny_sdxl import HIDDEN_1, HIDDEN_2, tiny_xl_unet


def _controlnet(unet, channel_order="rgb", global_pool=False, seed=3):
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16))
    controlnet.register_to_config(controlnet_conditioning_channel_order=channel_order,
                                  global_pool_conditions=global_pool)
    torch.manual_seed(seed)
    for p in controlnet.parameters():  # from_unet zeroes the output convolutions: make the residuals real
        p.data.normal_(0, 0.05)
    return controlnet.eval()


def _inputs(xl: bool, size=(16, 16), batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, *size, generator=g)
    t = torch.tensor(617.0)
    if xl:
        c = torch.randn(batch, 7, HIDDEN_1 + HIDDEN_2, generator=g)
        added = {"text_embeds": torch.randn(batch, HIDDEN_2, generator=g),
                 "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * batch)}
    else:
        c, added = torch.randn(batch, 7, 32, generator=g), None
    hint = torch.rand(batch, 3, size[0] * 2, size[1] * 2, generator=g)  # two embedding levels: one stride-2 conv
    return x, t, c, added, hint


@pytest.mark.parametrize("xl", [False, True], ids=["sd", "sdxl"])
@pytest.mark.parametrize("size", [(16, 16), (12, 20), (10, 14)], ids=["square", "wide", "odd-latent"])
def test_unet_halves_with_controlnet_residuals_equal_the_whole_forward(xl, size):
    unet = (tiny_xl_unet() if xl else tiny_unet()).eval()
    controlnet = _controlnet(unet)
    x, t, c, added, hint = _inputs(xl, size)
    with torch.no_grad():
        down, mid = controlnet(x, t, c, hint, added_cond_kwargs=added, return_dict=False)
        whole = unet(x, t, c, added_cond_kwargs=added, down_block_additional_residuals=down,
                     mid_block_additional_residual=mid, return_dict=False)[0]
        plain = unet(x, t, c, added_cond_kwargs=added, return_dict=False)[0]
        emb, context, sample, *skips = split_forward.down_mid(unet, x, t, c, added)
        halves = split_forward.up(unet, emb, context, sample, tuple(skips), tuple(down), mid)
        plain_halves = split_forward.up(unet, emb, context, sample, tuple(skips))
    assert torch.equal(halves, whole)
    assert torch.equal(plain_halves, plain)
    assert not torch.equal(whole, plain)  # the residuals did act


@pytest.mark.parametrize("xl", [False, True], ids=["sd", "sdxl"])
@pytest.mark.parametrize("guess_mode", [False, True], ids=["balanced", "guess-mode"])
@pytest.mark.parametrize("channel_order", ["rgb", "bgr"])
def test_controlnet_body_from_its_hint_embedding_equals_the_controlnet(xl, guess_mode, channel_order):
    controlnet = _controlnet(tiny_xl_unet() if xl else tiny_unet(), channel_order)
    x, t, c, added, hint = _inputs(xl)
    with torch.no_grad():
        down, mid = controlnet(x, t, c, hint, 1.0, added_cond_kwargs=added, guess_mode=guess_mode, return_dict=False)
        embedding = split_forward.hint_embedding(controlnet, hint)
        outs = split_forward.controlnet_body(controlnet, x, t, c, embedding, added, guess_mode)
    assert len(outs) == len(down) + 1
    assert all(torch.equal(a, b) for a, b in zip(outs, (*down, mid)))


def test_pooled_controlnet_body_equals_the_controlnet():
    controlnet = _controlnet(tiny_unet(), global_pool=True)
    x, t, c, added, hint = _inputs(False)
    with torch.no_grad():
        down, mid = controlnet(x, t, c, hint, return_dict=False)
        outs = split_forward.controlnet_body(controlnet, x, t, c, split_forward.hint_embedding(controlnet, hint))
    assert outs[-1].shape[-2:] == (1, 1)
    assert all(torch.equal(a, b) for a, b in zip(outs, (*down, mid)))


def test_only_the_families_layouts_are_split():
    unet = tiny_unet()
    assert split_forward.splittable(unet) and split_forward.splittable(_controlnet(unet))
    unet.register_to_config(center_input_sample=True)
    assert not split_forward.splittable(unet)
    labelled = tiny_unet()
    labelled.class_embedding = torch.nn.Identity()  # class-conditioned UNets take the whole forward
    assert not split_forward.splittable(labelled)


class _Served:
    """A fast-path call as control_overlap sees one: a function, ready once it has a graph."""

    side = True  # graphed in a memory pool of its own, as the fast path's ControlNet calls

    def __init__(self, fn):
        self.fn, self.calls, self.borrowed = fn, 0, 0

    def ready(self, *tensors):
        return True

    def __call__(self, *tensors, borrow: bool = False):
        self.calls += 1
        self.borrowed += borrow
        return self.fn(*tensors)


def test_the_controlnet_learns_its_unet_and_a_stash_nobody_takes_ends_the_partnership():
    from pipelines.control_overlap import ControlOverlap, ControlState

    overlap, state = ControlOverlap(), ControlState()
    controlnet = _Served(lambda x, t, c, hint: (x * 2, x + hint))
    half = _Served(lambda x, t, c: (x + 1,))
    x, t, c, hint = torch.ones(1, 4, 2, 2), torch.tensor(10.0), torch.zeros(1, 3, 8), torch.ones(1, 4, 2, 2)

    def step(latents, unet_latents=None, scale=1.0):
        unet_latents = latents if unet_latents is None else unet_latents
        outs = overlap.run_controlnet(state, controlnet, (latents, t, c, hint), scale, (latents, t, c, ()))
        first = overlap.first_half(half, unet_latents, t, c, (), (unet_latents, t, c))
        return outs, first

    outs, first = step(x)  # first step: sequential, and the UNet call on the same inputs is learned
    assert state.partner() is half and half.calls == 1 and overlap.overlapped == 0
    y = x + 1
    outs, first = step(y, scale=0.5)  # from now on the first half is launched with the ControlNet
    assert overlap.overlapped == 1 and half.calls == 2 and torch.equal(first[0], y + 1)
    assert torch.equal(outs[0], y * 2 * 0.5)  # the conditioning scale applied outside
    # A UNet fed other latents (guess mode, a 9-channel UNet) does not take the stash: it runs
    # its own first half, and the ControlNet stops launching one for it.
    z = x + 2
    outs, first = step(z, unet_latents=z * 3)
    assert torch.equal(first[0], z * 3 + 1) and state.partner is None and half.calls == 4
    outs, first = step(z, unet_latents=z * 3)
    assert overlap.overlapped == 2 and half.calls == 5  # sequential again: no wasted half
    # Every first half goes straight into its UNet's second half: borrowed, never copied; the
    # ControlNet's residuals leave the pipeline's hands copied (several units may share a graph).
    assert half.borrowed == half.calls and controlnet.borrowed == 0
