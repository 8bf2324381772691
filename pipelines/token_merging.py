"""Token merging (ToMe for SD: Bolya & Hoffman, "Token Merging for Fast Stable Diffusion",
CVPR-W 2023). Lossy, off by default, written in the infotext as A1111 writes it ("Token
merging ratio: 0.5"); the request field is ``token_merging`` (core/requests.py).

Why it saves time: self-attention costs N² in the number of tokens, and at the UNet's
highest resolution (64×64 = 4096 tokens at 512²) neighbouring tokens are nearly alike. ToMe
merges the r = int(N·ratio) most redundant ones before the self-attention (attn1) and copies
its output back after it, so attention runs on N − r tokens. Cross-attention and the MLP
are untouched (ToMe SD's defaults, and A1111's).

The method, per transformer block and per image of the batch:
- the h×w token grid is cut into 2×2 windows; one token per window (its top-left one, as
  A1111's default "no random perturbations": deterministic, so a seed gives the same image
  every time) is a *destination*, the rest (and the odd row/column) are *sources*;
- cosine similarity of every source to every destination; each source's best destination;
  the r sources with the highest best-similarity are averaged into it (mean, the destination
  included); attention runs on [unmerged sources, destinations];
- unmerge: each merged source takes its destination's output.
All shapes follow from (N, ratio): no data-dependent sizes, so a CUDA graph can hold it.
The metric is attn1's input (norm1 of the block input; ToMe SD measures on the block input
before the norm): the same tokens, layer-normalised.

Where: the transformer blocks of the highest-resolution level that has any. On SD 1.x/2.x
that is the first level (ToMe SD's max_downsample 1). SDXL's first level has no attention:
tomesd/A1111 at max_downsample 1 then merge nothing at all; here the option acts on SDXL's
second level (1024² → 64×64 tokens, as SD 1.5's first at 512²), where SDXL spends most of
its attention time.

How, without copying diffusers' forward (as turbo.py): a *view* of the UNet shares every
module and weight with it but holds a stand-in for attn1 in those blocks (and one for conv_in
that notes the latent size, so the stand-ins know each level's h×w). The UNet object itself
is never changed, so its compiled/graphed fast path stays valid for plain requests; for one
request its forward is routed through a `Merger` that runs the view. On the GPU fast path
each ratio is its own FastCall (an eager CUDA graph captured at its second call, then a
compiled one from the background worker once no plain call's compile waits, as turbo's).
ControlNet residuals pass through the view as through the UNet (the pair is not split across
two streams as control_overlap.py does for plain requests: one UNet call per step). With
DeepCache (turbo) the DeepCache views are built over the merged view: both act.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn

from .turbo import _routed, _unet_kwargs, _view, graphed_runtime, simple_unet_call, unet_output

WINDOW = 2  # sx = sy = 2: one destination per 2×2 window
KEPT_RATIOS = 4  # merged views (and their CUDA graphs) kept per UNet, least recently used dropped


# ----------------------------------------------------------------------------- the maths

def grid_split(h: int, w: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(destinations, sources): token indices of an h×w grid (row-major). A destination is the
    top-left token of each full 2×2 window; everything else (odd last row/column too) is a
    source. Static slicing only: the same indices every call."""
    idx = torch.arange(h * w, device=device).view(h, w)
    hh, ww = h // WINDOW * WINDOW, w // WINDOW * WINDOW
    dst = idx[:hh:WINDOW, :ww:WINDOW].reshape(-1)
    src = torch.cat([idx[:hh:WINDOW, 1:ww:WINDOW].reshape(-1), idx[1:hh:WINDOW, :ww].reshape(-1),
                     idx[:hh, ww:].reshape(-1), idx[hh:, :].reshape(-1)])
    return dst, src


def _rows(index: torch.Tensor, channels: int) -> torch.Tensor:
    return index[..., None].expand(*index.shape, channels)


def mean_into(dests: torch.Tensor, moving: torch.Tensor, into: torch.Tensor, dense: bool | None = None) -> torch.Tensor:
    """Each destination (B, Nb, C) averaged with the moving tokens (B, r, C) whose index `into`
    (B, r) names it. CUDA's scatter adds atomically, in no fixed order (last bits vary run to
    run), so there (dense) the sums are a one-hot matmul, in a fixed order: a seed gives the
    same image every time. Static shapes either way (no one_hot(): it checks its range on the host)."""
    if not (dests.is_cuda if dense is None else dense):
        return dests.scatter_reduce(1, _rows(into, dests.shape[-1]), moving, reduce="mean", include_self=True)
    onehot = (into[:, None, :] == torch.arange(dests.shape[1], device=into.device)[None, :, None]).to(dests.dtype)
    # weights 1/(1 + count) before the matmul: a sum of thousands of fp16 tokens could overflow
    scale = (1 / (1 + onehot.sum(dim=-1, keepdim=True, dtype=torch.float32))).to(dests.dtype)
    return dests * scale + (onehot * scale) @ moving


class Merge:
    """The merge of one block's tokens (B, N, C) on an h×w grid: merge() gives (B, N − r, C),
    unmerge() of attention's output gives (B, N, C) back."""

    def __init__(self, metric: torch.Tensor, h: int, w: int, r: int):
        self.n = metric.shape[1]
        self.dst, self.src = grid_split(h, w, metric.device)
        self.r = max(0, min(r, self.src.numel()))
        unit = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        scores = unit[:, self.src] @ unit[:, self.dst].transpose(1, 2)  # (B, sources, destinations)
        best, best_dst = scores.max(dim=-1)
        order = torch.argsort(best, dim=-1, descending=True, stable=True)  # most redundant sources first
        self.merged, self.kept = order[:, :self.r], order[:, self.r:]  # positions in src
        self.into = best_dst.gather(1, self.merged)  # each merged source's destination (position in dst)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-1]
        sources, dests = x[:, self.src], x[:, self.dst]
        kept = sources.gather(1, _rows(self.kept, c))
        if self.r:
            dests = mean_into(dests, sources.gather(1, _rows(self.merged, c)), self.into)
        return torch.cat([kept, dests], dim=1)

    def unmerge(self, y: torch.Tensor) -> torch.Tensor:
        b, _, c = y.shape
        n_kept = self.kept.shape[1]
        kept, dests = y[:, :n_kept], y[:, n_kept:]
        out = y.new_empty(b, self.n, c)
        out[:, self.dst] = dests
        positions = self.src.expand(b, -1)
        out.scatter_(1, _rows(positions.gather(1, self.kept), c), kept)
        if self.r:
            out.scatter_(1, _rows(positions.gather(1, self.merged), c), dests.gather(1, _rows(self.into, c)))
        return out


def merged_tokens(n: int, ratio: float, h: int, w: int) -> int:
    """How many tokens attention sees: N − r, r = int(N·ratio) capped at the sources' count."""
    sources = n - (h // WINDOW) * (w // WINDOW)
    return n - min(int(n * ratio), sources)


# ----------------------------------------------------------------------------- the view

class _Grid:
    """The latent (H, W) of the call in progress (conv_in's stand-in notes it): each level's
    token grid is it halved (rounding up, as the UNet's stride-2 downsamplers) once per level."""

    def __init__(self):
        self.size: tuple[int, int] | None = None

    def at(self, level: int, tokens: int) -> tuple[int, int] | None:
        if self.size is None:
            return None
        h, w = self.size
        for _ in range(level):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        return (h, w) if h * w == tokens else None


class _NoteSize(nn.Module):
    """conv_in's stand-in: notes the latent size, then runs conv_in."""

    def __init__(self, conv_in: nn.Module, grid: _Grid):
        super().__init__()
        self.module, self.grid = conv_in, grid

    def forward(self, sample):
        self.grid.size = tuple(sample.shape[-2:])
        return self.module(sample)


class MergedSelfAttention(nn.Module):
    """attn1's stand-in: attention on the merged tokens, its output unmerged. Anything but plain
    self-attention on the expected grid (a mask, cross-attention in attn1) runs attn1 as it is."""

    def __init__(self, attn: nn.Module, ratio: float, grid: _Grid, level: int):
        super().__init__()
        self.module, self.ratio, self.grid, self.level = attn, ratio, grid, level

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        hw = self.grid.at(self.level, hidden_states.shape[1]) if hidden_states.ndim == 3 else None
        if hw is None or encoder_hidden_states is not None or attention_mask is not None:
            return self.module(hidden_states, encoder_hidden_states=encoder_hidden_states,
                               attention_mask=attention_mask, **kwargs)
        merge = Merge(hidden_states, *hw, int(hidden_states.shape[1] * self.ratio))
        return merge.unmerge(self.module(merge.merge(hidden_states), **kwargs))


def merge_level(unet) -> int | None:
    """The highest-resolution level (down block index) with transformer blocks; None: no attention."""
    levels = [i for i, block in enumerate(unet.down_blocks) if getattr(block, "attentions", None)]
    return min(levels) if levels else None


def _merged_blocks(unet) -> list[tuple[str, int]]:
    level = merge_level(unet)
    if level is None:
        return []
    up = len(unet.up_blocks) - 1 - level  # the up block at the same resolution
    found = [("down_blocks", level)]
    if 0 <= up < len(unet.up_blocks) and getattr(unet.up_blocks[up], "attentions", None):
        found.append(("up_blocks", up))
    return found


def _tree_key(unet) -> tuple:
    """Ids of every module a view copies a child list of: a change (LoRA layers injected, fp8
    linears swapped in) makes a new view, never a stale one."""
    parts = [*unet._modules.values()]
    for name, index in _merged_blocks(unet):
        block = getattr(unet, name)[index]
        parts += block._modules.values()
        for t2d in block.attentions:
            parts += t2d._modules.values()
            for tb in getattr(t2d, "transformer_blocks", ()):
                parts += tb._modules.values()
    return tuple(id(m) for m in parts)


def merged_view(unet, ratio: float, grid: _Grid) -> nn.Module:
    """The UNet with MergedSelfAttention around attn1 in the merged level's transformer blocks
    and conv_in noting the latent size; everything else is the UNet's own modules."""
    level = merge_level(unet)

    def block_view(block):
        attentions = nn.ModuleList([
            _view(t2d, {"transformer_blocks": nn.ModuleList([
                _view(tb, {"attn1": MergedSelfAttention(tb.attn1, ratio, grid, level)})
                for tb in t2d.transformer_blocks])}) if hasattr(t2d, "transformer_blocks") else t2d
            for t2d in block.attentions])
        return _view(block, {"attentions": attentions})

    replaced = {"conv_in": _NoteSize(unet.conv_in, grid)}
    for name, index in _merged_blocks(unet):
        blocks = list(getattr(unet, name))
        blocks[index] = block_view(blocks[index])
        replaced[name] = nn.ModuleList(blocks)
    return _view(unet, replaced)


class TokenMerging:
    """The merged view of one UNet at one ratio and its calls (FastCalls on the fast path).
    Kept on the UNet per ratio; rebuilt when its modules change."""

    def __init__(self, unet, ratio: float, runtime):
        self.key, self.runtime, self.ratio, self.unet = _tree_key(unet), runtime, ratio, unet
        self.grid = _Grid()
        self.view = merged_view(unet, ratio, self.grid)
        # A twin of the view for what the background worker compiles (turbo.py's DeepCache.twin
        # too): its own stand-ins and grid, so a compile's runs never write a request's grid.
        self.view.__dict__["_sd_studio_fresh"] = lambda: merged_view(unet, ratio, _Grid())
        self._calls: dict = {}

    @staticmethod
    def of(unet, ratio: float, runtime=None) -> "TokenMerging":
        views = unet.__dict__.setdefault("_sd_studio_tome", {})
        merging = views.pop(ratio, None)
        if merging is None or merging.key != _tree_key(unet) or merging.runtime is not runtime:
            merging = TokenMerging(unet, ratio, runtime)
        views[ratio] = merging  # most recently used last
        while len(views) > KEPT_RATIOS:  # any float is a ratio: each would keep its own graphs
            views.pop(next(iter(views)))
        return merging

    def call(self, spec: tuple):
        """fn(x, t, c, *extra) → (ε,) through the merged view; a FastCall per spec on the fast path."""
        if spec not in self._calls:
            fn = self._fn(spec)
            self._calls[spec] = fn if self.runtime is None else self.runtime.call(
                f"unet tome {self.ratio:g}", fn, inline=True, lossy=True,
                twin=lambda: TokenMerging(self.unet, self.ratio, None)._fn(spec))
        return self._calls[spec]

    def _fn(self, spec: tuple):
        def fn(x, t, c, *extra):
            return (self.view(x, t, c, return_dict=False, **_unet_kwargs(*spec, extra))[0],)
        return fn


class Merger:
    """Stands in for unet.forward during one request: simple calls run the merged view; a call
    it cannot serve (unusual arguments, a LoRA scale) runs the UNet as it is."""

    def __init__(self, unet, ratio: float, runtime=None):
        self.merging, self.fallback = TokenMerging.of(unet, ratio, runtime), unet.forward
        self.merged_calls = self.other_calls = 0

    def __call__(self, sample, timestep, encoder_hidden_states, *args, return_dict: bool = True, **kwargs):
        parsed = simple_unet_call(sample, timestep, args, kwargs)
        if parsed is None:
            self.other_calls += 1
            return self.fallback(sample, timestep, encoder_hidden_states, *args, return_dict=return_dict, **kwargs)
        spec, extra = parsed
        t = timestep.to(device=sample.device, dtype=torch.float32)  # exact: the UNet embeds t.float()
        self.merged_calls += 1
        return unet_output(self.merging.call(spec)(sample, t, encoder_hidden_states, *extra)[0], return_dict)


@contextmanager
def token_merging(unet, ratio: float, runtime=None):
    """unet.forward routed through a Merger for the block; yields it (its call counts), or
    None when ratio is 0 or the UNet has no attention to merge (nothing changes)."""
    if ratio <= 0 or merge_level(unet) is None:
        yield None
        return
    with _routed(unet, Merger(unet, ratio, graphed_runtime(unet, runtime))) as merger:
        yield merger


def merging_sampler(sample, pipe, ratio: float, runtime=None, counts: dict | None = None):
    """A sampler (generation.py) whose every batch runs under token_merging on pipe's UNet;
    `counts` (if given) adds up the merged and other UNet calls."""
    if ratio <= 0:
        return sample

    def run(seeds, report):
        with token_merging(pipe.unet, ratio, runtime) as merger:
            latents = sample(seeds, report)
        if counts is not None and merger is not None:
            for name in ("merged_calls", "other_calls"):
                counts[name] = counts.get(name, 0) + getattr(merger, name)
        return latents

    return run


def merged_model(unet, ratio: float, runtime=None):
    """What DeepCache (turbo.py) builds its views over for a request with both options: the
    merged view (the UNet itself when ratio is 0)."""
    if ratio <= 0 or merge_level(unet) is None:
        return None
    return TokenMerging.of(unet, ratio, graphed_runtime(unet, runtime)).view
