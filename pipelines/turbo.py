"""Turbo: DeepCache-style step-feature caching. Lossy, off by default, written in the
infotext ("Turbo: DeepCache 3"); the request field is ``turbo`` (core/requests.py).

The method (Ma, Fang, Wang: "DeepCache: Accelerating Diffusion Models for Free", CVPR 2024):
a UNet's deep features change little from one denoising step to the next, while the
shallowest skip connection (conv_in's output, joined again in the last up block's last
layer) carries the detail. So every N-th UNet call is *full* and keeps what the rest of the
network produced; the N−1 calls after it are *shallow*: conv_in, the last up block's last
layer (resnet + transformer) on [kept feature, fresh conv_in output], and conv_out. That is
the paper's cache branch 0 for SD (DeepCacheSDHelper's default); nothing else runs. DeepCache
N=3 over 30 steps: 10 full calls, 20 shallow ones.

How, without copying diffusers' forward: two *views* of the UNet share every module and
weight with it but hold stand-ins in the cached slots (every down block, the mid block, the
up blocks but the last, and the last one's layers but its last). In the recording view a
stand-in runs its real module and keeps the output; in the replaying view it hands back the
kept output and runs nothing. diffusers' own forward runs on each view, so timestep
embeddings, SDXL's added conditioning and ControlNet residuals are handled exactly as for the
UNet. The UNet object itself is never changed (its compiled/graphed fast path stays valid);
for one batch of a request its forward is routed through a `Stepper` that picks full or
shallow per call.

On the GPU fast path the full and the shallow call are two FastCalls of their own, so both
are served by CUDA graphs (captured at their second call, as the plain UNet's) and then by
compiled graphs: the background worker compiles them like the plain UNet, but only once no
plain call's compile is waiting (a trace of the full view is another full-UNet compile, and an
opt-in must not delay what every request runs).

ControlNet: each ControlNet is cached on the same cycle (`ControlStepper`): on shallow steps
its down and mid blocks hand back kept outputs, so only its conv_in, the control image's
embedding and the zero convolutions run; its first residual (conv_in's level, the one a
shallow UNet call reads) is fresh every step, the deeper ones act through kept features at
most N−1 steps old, as the UNet's own.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from .core.requests import TURBO_MODES

# diffusers' UNet keyword arguments a turbo call understands (others: the UNet as it is).
_PASSED = {"timestep_cond", "cross_attention_kwargs", "attention_mask", "encoder_attention_mask", "class_labels",
           "down_intrablock_additional_residuals"}  # these must be empty
_RESIDUALS = ("down_block_additional_residuals", "mid_block_additional_residual")


def cache_interval(mode: str) -> int:
    """'DeepCache 3' → 3 (one full UNet call in 3); 'Off' → 1."""
    if mode not in TURBO_MODES:
        raise ValueError(f"unknown turbo mode {mode!r}")
    return 1 if mode == "Off" else int(mode.split()[-1])


class _Keep(nn.Module):
    """Recording stand-in: runs the real module and keeps its output."""

    def __init__(self, module: nn.Module, kept: list):
        super().__init__()
        self.module, self.kept = module, kept
        _mirror(self, module)

    def forward(self, *args, **kwargs):
        out = self.module(*args, **kwargs)
        self.kept.append(out)
        return out


class _Replay(nn.Module):
    """Replaying stand-in: hands back the kept output of its module; computes nothing."""

    def __init__(self, module: nn.Module, feed: list):
        super().__init__()
        self.feed = feed
        _mirror(self, module)

    def forward(self, *args, **kwargs):
        return self.feed.pop(0)


def _mirror(stand_in: nn.Module, module: nn.Module) -> None:
    # diffusers' forward reads these off each block: which arguments it takes, and how many
    # skip connections an up block consumes. Plain attributes (not registered submodules).
    for name in ("has_cross_attention", "resnets"):
        if hasattr(module, name):
            object.__setattr__(stand_in, name, getattr(module, name))


def _modules_key(model) -> tuple:
    last_up = model.up_blocks[-1]._modules.values() if hasattr(model, "up_blocks") else ()
    return tuple(id(m) for m in (*model._modules.values(), *last_up))


def _view(module: nn.Module, replaced: dict) -> nn.Module:
    """An object of module's class sharing its state, modules and weights, but for the
    `replaced` children, and with no instance forward wrappers or hooks of its own."""
    view = object.__new__(type(module))
    view.__dict__.update(module.__dict__)
    for own in ("forward", "_sd_studio_fast", "_sd_studio_turbo", "_sd_studio_tome"):  # instance wrappers: the view runs diffusers' forward
        view.__dict__.pop(own, None)
    for name, value in module.__dict__.items():  # hooks on the UNet fire once, on the UNet's own call
        if "hooks" in name and isinstance(value, dict):
            view.__dict__[name] = type(value)()
    view.__dict__["_modules"] = {**module._modules, **replaced}
    return view


def _unet_view(unet, stand_in) -> nn.Module:
    """The UNet with stand_in(module) everywhere but conv_in, the last up block's last layer
    (resnet, and transformer where it has them), the time embedding and conv_out."""
    last = unet.up_blocks[-1]
    layers = {name: nn.ModuleList([*(stand_in(m) for m in getattr(last, name)[:-1]), getattr(last, name)[-1]])
              for name in ("resnets", "attentions") if getattr(last, name, None) is not None}
    replaced = {"down_blocks": nn.ModuleList([stand_in(b) for b in unet.down_blocks]),
                "up_blocks": nn.ModuleList([*(stand_in(b) for b in unet.up_blocks[:-1]), _view(last, layers)])}
    if unet.mid_block is not None:
        replaced["mid_block"] = stand_in(unet.mid_block)
    return _view(unet, replaced)


def _controlnet_view(controlnet, stand_in) -> nn.Module:
    """The ControlNet with stand_in(module) for its down and mid blocks: what remains is its
    conv_in, the control image's embedding, the time embedding and the zero convolutions, so
    its first residual (the only one a shallow UNet call reads) is fresh."""
    return _view(controlnet, {"down_blocks": nn.ModuleList([stand_in(b) for b in controlnet.down_blocks]),
                              "mid_block": stand_in(controlnet.mid_block)})


class DeepCache:
    """The recording and replaying views of one model (UNet or ControlNet) and their calls
    (FastCalls on the fast path). Kept on the model; rebuilt when its modules change."""

    def __init__(self, model, runtime, make_view, layout_from: "DeepCache | None" = None):
        self.key, self.runtime = _modules_key(model), runtime
        self.model, self.make_view, self.layout_from = model, make_view, layout_from
        self.kept: list = []
        self.feed: list = []
        self.layout: list = []  # per kept output, in call order: (its pytree structure, its tensor count)
        self.recording = make_view(model, lambda module: _Keep(module, self.kept))
        self.replaying = make_view(model, lambda module: _Replay(module, self.feed))
        self._calls: dict = {}

    @staticmethod
    def of(model, runtime=None, make_view=_unet_view) -> "DeepCache":
        cache = model.__dict__.get("_sd_studio_turbo")
        if cache is None or cache.key != _modules_key(model) or cache.runtime is not runtime:
            cache = model.__dict__["_sd_studio_turbo"] = DeepCache(model, runtime, make_view)
        return cache

    def twin(self) -> "DeepCache":
        """Views, stand-ins and lists of its own over the same weights (and over a fresh merged
        view where the model is one: token_merging.py), reading this cache's layout: what the
        background worker compiles, so its runs share no Python state with a request's calls."""
        fresh = getattr(self.model, "_sd_studio_fresh", None)
        return DeepCache(self.model if fresh is None else fresh(), None, self.make_view, layout_from=self)

    def _call(self, kind: str, spec: tuple, make):
        """make(cache) → the call's fn over that cache's views: over this one, and over a twin
        for what the worker compiles."""
        if self.runtime is None:
            return make(self)
        if (kind, spec) not in self._calls:
            self._calls[kind, spec] = self.runtime.call(kind, make(self), inline=True, lossy=True,
                                                        twin=lambda: make(self.twin()))
        return self._calls[kind, spec]

    def full(self, name: str, spec: tuple, run):
        """fn(*inputs) → (*run(recording view, *inputs), *kept tensors)."""
        return self._call(f"{name} turbo full", spec, lambda cache: cache._full(run))

    def shallow(self, name: str, spec: tuple, run, n_kept: int):
        """fn(*kept tensors, *inputs) → run(replaying view, *inputs)."""
        return self._call(f"{name} turbo shallow", spec, lambda cache: cache._shallow(run, n_kept))

    def _full(self, run):
        def fn(*inputs):
            self.kept.clear()
            outs = run(self.recording, *inputs)
            flat, layout = [], []
            for out in self.kept:  # a tensor, or a tuple (a down block's (hidden states, skip connections))
                leaves, structure = tree_flatten(out)
                flat += leaves
                layout.append((structure, len(leaves)))
            self.kept.clear()
            if layout != self.layout:  # the same object while equal: compiled code reads it
                self.layout = layout
            return (*outs, *flat)
        return fn

    def _shallow(self, run, n_kept: int):
        source = self.layout_from or self  # a twin unpacks as its original's eager full calls packed

        def fn(*args):
            kept, inputs = list(args[:n_kept]), args[n_kept:]
            self.feed.clear()
            for structure, count in source.layout:
                self.feed.append(tree_unflatten(kept[:count], structure))
                del kept[:count]
            outs = run(self.replaying, *inputs)
            self.feed.clear()
            return outs
        return fn


class _Cycle:
    """Full every `interval`-th call (or when the inputs' shapes change), shallow between."""

    def __init__(self, interval: int):
        self.interval, self.kept, self.key, self.age = interval, None, None, 0
        self.full_calls = self.shallow_calls = self.other_calls = 0

    def run(self, cache: DeepCache, name: str, spec: tuple, run, inputs: list, n_out: int) -> tuple:
        key = (spec, tuple((tuple(v.shape), v.dtype) for v in inputs))
        if self.kept is None or key != self.key or self.age >= self.interval:
            out = cache.full(name, spec, run)(*inputs)
            self.kept, self.key, self.age = tuple(out[n_out:]), key, 1
            self.full_calls += 1
            return tuple(out[:n_out])
        self.age += 1
        self.shallow_calls += 1
        return tuple(cache.shallow(name, spec, run, len(self.kept))(*self.kept, *inputs))

    def other(self):
        self.kept = None
        self.other_calls += 1


def _empty(value) -> bool:
    return value is None or (isinstance(value, (dict, list, tuple)) and not value)


def _unet_kwargs(added_keys: tuple, n_res: int, extra) -> dict:
    kwargs = {}
    if added_keys:
        kwargs["added_cond_kwargs"] = dict(zip(added_keys, extra[:len(added_keys)]))
    if n_res:
        res = extra[len(added_keys):]
        kwargs["down_block_additional_residuals"] = tuple(res[:-1])
        kwargs["mid_block_additional_residual"] = res[-1]
    return kwargs


def simple_unet_call(sample, timestep, args: tuple, kwargs: dict) -> tuple | None:
    """A UNet call a view can serve: (spec, extra tensors) for run functions and _unet_kwargs,
    or None (unusual arguments, LoRA scale, T2I adapters)."""
    added = kwargs.get("added_cond_kwargs") or {}
    down, mid = (kwargs.get(name) for name in _RESIDUALS)
    simple = (not args and torch.is_tensor(timestep) and torch.is_tensor(sample)
              and set(kwargs) <= _PASSED | set(_RESIDUALS) | {"added_cond_kwargs"}
              and all(_empty(kwargs.get(name)) for name in _PASSED)
              and all(torch.is_tensor(v) for v in added.values()) and (down is None) == (mid is None))
    if not simple:
        return None
    added_keys = tuple(sorted(added))
    extra = [added[k] for k in added_keys] + ([] if down is None else [*down, mid])
    return (added_keys, 0 if down is None else len(down) + 1), extra


def unet_output(eps, return_dict: bool):
    if return_dict:
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=eps)
    return (eps,)


class Stepper(_Cycle):
    """Stands in for unet.forward during one batch. A call it cannot serve (unusual
    arguments, LoRA scale, T2I adapters) runs the UNet as it is and restarts the cycle.
    model: what the views are built over (token_merging.py's merged view), default the UNet."""

    def __init__(self, unet, interval: int, runtime=None, model=None):
        super().__init__(interval)
        self.cache, self.fallback = DeepCache.of(unet if model is None else model, runtime), unet.forward

    def __call__(self, sample, timestep, encoder_hidden_states, *args, return_dict: bool = True, **kwargs):
        parsed = simple_unet_call(sample, timestep, args, kwargs)
        if parsed is None:
            self.other()
            return self.fallback(sample, timestep, encoder_hidden_states, *args, return_dict=return_dict, **kwargs)
        spec, extra = parsed

        def run(view, x, t, c, *extra):
            return (view(x, t, c, return_dict=False, **_unet_kwargs(*spec, extra))[0],)

        # Exact: the UNet embeds timesteps[:, None].float(); one graph serves int and float timesteps.
        t = timestep.to(device=sample.device, dtype=torch.float32)
        eps = self.run(self.cache, "unet", spec, run, [sample, t, encoder_hidden_states, *extra], 1)[0]
        return unet_output(eps, return_dict)


class ControlStepper(_Cycle):
    """Stands in for a ControlNet's forward during one batch, on the same cycle as the UNet
    (one ControlNet call per UNet call): on shallow steps only its conv_in level runs. As
    the fast path does, it runs at conditioning scale 1 and scales outside (exact)."""

    def __init__(self, controlnet, interval: int, runtime=None):
        super().__init__(interval)
        self.cache = DeepCache.of(controlnet, runtime, _controlnet_view)
        self.fallback = controlnet.forward

    def __call__(self, sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale=1.0,
                 class_labels=None, timestep_cond=None, attention_mask=None, added_cond_kwargs=None,
                 cross_attention_kwargs=None, guess_mode=False, return_dict=True):
        simple = (all(_empty(v) for v in (class_labels, timestep_cond, attention_mask, added_cond_kwargs,
                                           cross_attention_kwargs))
                  and torch.is_tensor(timestep) and torch.is_tensor(controlnet_cond)
                  and isinstance(conditioning_scale, (int, float)))
        if not simple:
            self.other()
            return self.fallback(sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale,
                                 class_labels, timestep_cond, attention_mask, added_cond_kwargs, cross_attention_kwargs,
                                 guess_mode, return_dict)
        guess = bool(guess_mode)

        def run(view, x, t, c, cond):
            down, mid = view(x, t, c, cond, 1.0, guess_mode=guess, return_dict=False)
            return (*down, mid)

        t = timestep.to(device=sample.device, dtype=torch.float32)
        n_out = len(self.cache.recording.controlnet_down_blocks) + 1
        outs = self.run(self.cache, "controlnet", (guess,), run, [sample, t, encoder_hidden_states, controlnet_cond], n_out)
        if conditioning_scale != 1.0:
            outs = tuple(o * conditioning_scale for o in outs)
        down, mid = tuple(outs[:-1]), outs[-1]
        if return_dict:
            from diffusers.models.controlnets.controlnet import ControlNetOutput

            return ControlNetOutput(down_block_res_samples=down, mid_block_res_sample=mid)
        return down, mid


@contextmanager
def _routed(module, stepper):
    """module.forward is stepper inside the block, and what it was after it."""
    had, previous = "forward" in module.__dict__, module.__dict__.get("forward")
    module.forward = stepper
    try:
        yield stepper
    finally:
        if had:
            module.forward = previous
        else:
            del module.forward


def graphed_runtime(model, runtime):
    """The fast-path runtime for a view's calls of `model`, or None (eager): LoRA layers that may
    act unmerged change after a capture. Turbo's and token merging's views both ask."""
    from .fast_path import _lora_unsafe

    return None if runtime is None or _lora_unsafe(model) else runtime


@contextmanager
def deep_cache(unet, interval: int, runtime=None, controlnets=(), model=None):
    """unet.forward (and each ControlNet's) routed through a Stepper for the block: one
    sampling run, as the kept features belong to its latents. Yields the UNet's Stepper (its
    call counts), or None when interval ≤ 1 (nothing changes). model: a view of the UNet to
    cache over instead (token merging's)."""
    if interval <= 1:
        yield None
        return
    with ExitStack() as stack:
        for controlnet in controlnets:
            stack.enter_context(_routed(controlnet, ControlStepper(controlnet, interval,
                                                                   graphed_runtime(controlnet, runtime))))
        yield stack.enter_context(_routed(unet, Stepper(unet, interval, graphed_runtime(unet, runtime), model)))


def controlnets_of(pipe) -> list:
    """The ControlNetModel(s) a pipeline calls (MultiControlNetModel calls each of its nets)."""
    controlnet = getattr(pipe, "controlnet", None)
    if controlnet is None:
        return []
    nets = list(getattr(controlnet, "nets", [controlnet]))
    return [net for net in nets if type(net).__name__ == "ControlNetModel"]


def turbo_sampler(sample, pipe, mode: str, runtime=None, counts: dict | None = None, token_merging: float = 0.0):
    """A sampler (generation.py) whose every batch runs under deep_cache on pipe's UNet and
    ControlNets; `counts` (if given) adds up the UNet's full/shallow/other calls. With
    token_merging > 0 the cache's views are built over the merged view (token_merging.py)."""
    interval = cache_interval(mode)
    if interval <= 1:
        return sample

    def run(seeds, report):
        from .token_merging import merged_model

        model = merged_model(pipe.unet, token_merging, runtime)
        with deep_cache(pipe.unet, interval, runtime, controlnets_of(pipe), model) as stepper:
            latents = sample(seeds, report)
        if counts is not None:
            for name in ("full_calls", "shallow_calls", "other_calls"):
                counts[name] = counts.get(name, 0) + getattr(stepper, name)
        return latents

    return run
