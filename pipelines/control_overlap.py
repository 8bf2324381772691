"""A ControlNet step on two CUDA streams: the ControlNet beside its UNet's first half.

diffusers' ControlNet pipelines call the ControlNet, then the UNet with its residuals, on the
same latents, timestep and text embeddings. The UNet reads the residuals only after its down
and mid blocks (pipelines/split_forward.py), so once both are served by CUDA graphs the
ControlNet's wrapper launches the ControlNet on a second stream and, on the main stream, the
UNet's first half for the UNet call it knows will follow (a *stash*); the UNet's wrapper
takes the stash and runs only its second half. Each graph fills SMs the other leaves idle at
the low resolutions: 1.10× per ControlNet step on an H200 (bench/gpu_controlnet_overlap.py).
Same graphs, same maths: the images are bit-identical to the sequential order.

Which UNet follows which ControlNet is learned, not assumed: a UNet call whose latents,
timestep, text embeddings (and SDXL added conditioning) are the very tensor objects the last
ControlNet call got makes that UNet the ControlNet's *partner*. A stash nobody takes (guess
mode, Turbo's own stepper, a 9-channel UNet fed other latents) ends the partnership, so a
wrong guess costs one UNet half once (a whole step, once steps are joint).

Once all three are at their last upgrade (compiled, or eager graphs where nothing compiles),
the whole step becomes **one CUDA graph** (a *joint step*): the ControlNet forked onto a second
stream inside the capture, the UNet's first half beside it, the join, the residuals scaled and
the up half. Three graphs cost ~50 device copies per step (each graph's static inputs, the
residuals' clones) and the gaps between their launches; one graph reads its inputs once. The
ControlNet call then hands the pipeline the joint step's residuals and keeps its noise
prediction for the UNet call that follows; that call checks it got those very residuals (and
latents, timestep, text embeddings) and takes it. The partner's second half is learned like
the first: from a step served on two streams whose UNet call got the ControlNet's own
residuals. Same compiled functions, same order, so the images equal the three graphs' bit for
bit: 1.04× per request, ControlNet 1.23-1.24× txt2img on an H200 (docs/performance.md, round h).

Several units (diffusers' MultiControlNetModel, wrapped by the fast path) come here together
(run_units): their residuals are summed in diffusers' order, and once a step shows which UNet
halves get those sums, the whole step is one graph too, each unit's ControlNet on a side
stream of its own beside the first half (`joint_step`).
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch


class ControlState:
    """Per ControlNet (and per guess mode): its learned partner, the UNet-first-half FastCall;
    the second half that followed it, per ControlNet signature; the joint step built from them."""

    def __init__(self):
        self.partner = None  # weakref to a FastCall
        self.second: dict = {}  # ControlNet signature -> (weakref to the up-half FastCall, its signature)
        self.joint = None  # (the three functions it was built from, its FastCall)
        self.groups: dict = {}  # several units led by this one: run_units


class _Group:
    """Several units that run together (their ControlStates, the first one's holding this):
    the UNet halves that followed them, and the joint step built from all of their parts."""

    def __init__(self, states):
        self.states = [weakref.ref(state) for state in states]
        self.plan = None  # (weakref to the first half, its signature, weakref to the second half, its signature)
        self.joint = None  # (the functions it was built from, its FastCall)

    def alive_as(self, states) -> bool:
        return all(ref() is state for ref, state in zip(self.states, states))


class _Stash:
    """What a ControlNet call launched for the UNet call it expects next: the first half's
    outputs (two streams), or the whole step's noise prediction (joint)."""

    def __init__(self, state, partner, origin, outs, key, first=None, noise=None, group=None):
        self.state, self.partner, self.origin, self.outs, self.key = state, partner, origin, outs, key
        self.first, self.noise, self.group = first, noise, group

    def taken_by(self, half, origin: tuple, residuals: tuple) -> bool:
        """The expected UNet call: its partner half, the same inputs and (for a joint step,
        whose noise prediction depends on them) the very residuals this ControlNet returned."""
        return (half is self.partner and self.origin.matches(*origin)
                and (self.noise is None or _same(residuals, self.outs)))


class _Origin:
    """A call's inputs (latents, timestep, text embeddings, added tensors), with the latents'
    version so an in-place change is noticed."""

    def __init__(self, sample, timestep, context, added):
        self.objects = (sample, timestep, context, *added)
        self.version = sample._version

    def matches(self, sample, timestep, context, added) -> bool:
        """The very same objects, the latents unchanged since."""
        objects = (sample, timestep, context, *added)
        return (len(objects) == len(self.objects) and all(a is b for a, b in zip(objects, self.objects))
                and sample._version == self.version)


class ControlOverlap:
    """One per fast-path runtime (requests run one at a time under the manager's lock)."""

    def __init__(self, runtime=None):
        self.runtime = runtime  # makes the joint steps' FastCalls; None: never joins (unit tests)
        self.joint = runtime is not None  # benches switch it off to time the three graphs
        self.stash: _Stash | None = None
        self.last = None  # (weakref to ControlState, _Origin) of the last ControlNet call
        self.overlapped = 0  # ControlNet steps served on two streams (benches read it)
        self.joined = 0  # of those, steps served as one graph
        self.apart = 0  # > 0 while several units run one by one (units_apart): none joins alone
        self._group_step = None  # (_Group, the summed residuals) of the last several units' step
        self._sides: dict = {}
        self._scales: dict = {}

    def _side(self, device, index: int = 0) -> torch.cuda.Stream:
        if (device, index) not in self._sides:
            self._sides[(device, index)] = torch.cuda.Stream(device=device)
        return self._sides[(device, index)]

    def run_controlnet(self, state: ControlState, call, args: tuple, scale: float, origin: tuple,
                       alone: bool = True) -> tuple:
        """call(*args) = (x, t, context, hint, *added) → residuals at scale 1; scaled here.
        alone: not one of several units (whose step joins through run_units, never here)."""
        alone = alone and not self.apart
        if self.stash is not None and not self.stash.origin.matches(*origin):
            self._drop()  # nobody took it: that ControlNet's partner guess was wrong
        partner = state.partner() if state.partner is not None else None
        half_args = (*args[:3], *args[4:])
        # call.side: its graphs have a memory pool of their own, so they may run beside the partner's
        if (partner is not None and self.stash is None and call.side and call.ready(*args)
                and partner.ready(*half_args)):
            key = call.key(*args) if self.joint else None
            joint = self._joint(state, call, partner, key, args, scale) if self.joint and alone else None
            if joint is not None:
                *outs, noise = joint[0](*joint[1], borrow=True)
                self.stash = _Stash(state, partner, _Origin(*origin), tuple(outs), key, noise=noise)
                self.joined += 1
            else:
                outs, first = self._two_streams(call, partner, args, half_args, scale)
                self.stash = _Stash(state, partner, _Origin(*origin), outs, key, first=first)
            self.overlapped += 1
        else:
            outs = _scaled(call(*args), scale)
        self.last = (weakref.ref(state), _Origin(*origin))
        return outs

    def run_units(self, units: list) -> tuple:
        """Several units on the same latents, timestep and text embeddings: units = [(state,
        call, args, origin, scale), ...]. Their scaled residuals summed in diffusers' order
        (MultiControlNetModel: the first unit's, plus each next one's): (down list, mid). Once a
        step showed which UNet halves follow these units, the whole step is one graph."""
        group = self._group(units) if self.joint else None
        joint = self._group_joint(group, units) if group is not None else None
        if joint is not None:
            fast, inputs, half = joint
            *outs, noise = fast(*inputs, borrow=True)
            self.stash = _Stash(units[0][0], half, _Origin(*units[0][3]), tuple(outs), None, noise=noise, group=group)
            self.overlapped += 1
            self.joined += 1
            return list(outs[:-1]), outs[-1]
        for i, (state, call, args, origin, scale) in enumerate(units):
            outs = self.run_controlnet(state, call, args, scale, origin, alone=False)
            if i == 0:
                down, mid = list(outs[:-1]), outs[-1]
            else:
                down = [prev + cur for prev, cur in zip(down, outs[:-1])]
                mid = mid + outs[-1]  # diffusers adds in place (+=): the same sums
        self._group_step = (group, (*down, mid)) if group is not None else None
        return down, mid

    @contextmanager
    def units_apart(self):
        """Several units that cannot come here together (guess mode, a unit the fast path does
        not serve) call their ControlNets one by one inside this: the UNet gets their summed
        residuals, so none of them may run its one-unit joint step."""
        self.apart += 1
        try:
            yield
        finally:
            self.apart -= 1

    def _group(self, units) -> "_Group":
        states = [unit[0] for unit in units]
        key = tuple((id(state), unit[1].key(*unit[2])) for state, unit in zip(states, units))
        group = states[0].groups.get(key)
        if group is None or not group.alive_as(states):
            # Groups with a unit gone (evicted ControlNets) go; their graphs with them.
            states[0].groups = {k: g for k, g in states[0].groups.items() if all(ref() for ref in g.states)}
            group = states[0].groups[key] = _Group(states)
        return group

    def _group_joint(self, group: "_Group", units):
        """(the group's joint FastCall, its inputs, the first half it stands for) when its graph
        is ready; else None, and the worker is asked for it once every part is compiled."""
        plan = group.plan
        half, up = (plan[0](), plan[2]()) if plan is not None else (None, None)
        if half is None or up is None:
            return None
        fns = (*(unit[1].final_fn(unit[1].key(*unit[2])) for unit in units), half.final_fn(plan[1]),
               up.final_fn(plan[3]))
        args = units[0][2]
        inputs = (*args[:3], *args[4:], *(unit[2][3] for unit in units),
                  *(self._scale(float(unit[4]), args[0].device) for unit in units))
        fast = self._built(group, "controlnet units step (one graph)", fns, inputs, len(args) - 1)
        return (fast, inputs, half) if fast is not None else None

    def _built(self, owner, name: str, fns: tuple, inputs: tuple, shared: int):
        """owner.joint's FastCall for these parts' functions (built again when a part changed)
        when its graph for these inputs is ready; else None, the worker asked for it once the
        parts are all at their last upgrade. fns: the units' ControlNets, then the two halves;
        shared: how many of the inputs all units share (joint_step)."""
        if any(fn is None for fn in fns):
            return None
        if owner.joint is None or not _built_from(owner.joint[0], fns):
            x, units = inputs[0], len(fns) - 2
            sides = [self._side(x.device, i) for i in range(units)] if x.is_cuda else None
            step = joint_step(fns[:-2], fns[-2], fns[-1], shared, sides)
            owner.joint = (_weak(fns), self.runtime.call(name, step, prebuilt=True))
        fast = owner.joint[1]
        if fast.ready(*inputs):
            return fast
        fast.prepare(*inputs)
        return None

    def _two_streams(self, call, partner, args, half_args, scale) -> tuple:
        if not args[0].is_cuda:  # one stream: the same calls in the same order (CPU tests check the bookkeeping)
            outs = _scaled(call(*args), scale)
            return outs, partner(*half_args, borrow=True)
        main = torch.cuda.current_stream(args[0].device)
        side = self._side(args[0].device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            outs = _scaled(call(*args), scale)
        first = partner(*half_args, borrow=True)  # read by its UNet's second half next (first_half)
        main.wait_stream(side)
        for out in outs:  # made on the side stream, read on the main one
            out.record_stream(main)
        return outs, first

    def unet_with_residuals(self, half, sample, timestep, context, added, args: tuple, residuals: tuple,
                            second) -> torch.Tensor:
        """The UNet's noise prediction for a call with ControlNet residuals: the joint step's
        when it is this call's, else the first half's outputs through second(len(residuals)),
        the up-half FastCall. A step served on two streams whose UNet got its ControlNet's own
        residuals teaches that ControlNet its second half."""
        stash = self.stash
        origin = (sample, timestep, context, added)
        group_step, self._group_step = self._group_step, None
        if stash is not None and stash.noise is not None:
            self.stash = None
            if stash.taken_by(half, origin, residuals):
                return stash.noise.clone()  # the graph's own buffer: its next replay rewrites it
            stash.state.partner = None
            if stash.group is not None:
                stash.group.plan = None
            # Not this call's step. Its residuals are the graph's buffers, which the next replay
            # of a graph of that pool (the first half's, below) may overwrite: copies first.
            residuals = tuple(r.clone() if any(r is o for o in stash.outs) else r for r in residuals)
            stash = None
        taken = stash is not None and stash.taken_by(half, origin, residuals)
        first = self.first_half(half, sample, timestep, context, added, args)
        up = second(len(residuals))
        out = up(*first, *residuals)[0]
        if taken and self.joint and _same(residuals, stash.outs) and up.ready(*first, *residuals):
            stash.state.second[stash.key] = (weakref.ref(up), up.key(*first, *residuals))
        if (group_step is not None and _same(residuals, group_step[1]) and half.ready(*args)
                and up.ready(*first, *residuals)):  # several units' sums, as run_units made them
            group_step[0].plan = (weakref.ref(half), half.key(*args), weakref.ref(up), up.key(*first, *residuals))
        return out

    def first_half(self, half, sample, timestep, context, added, args: tuple) -> tuple:
        """The UNet's first half for this call: the stash launched beside its ControlNet when it
        is this call's, else run now (and, when the last ControlNet got these very inputs, that
        ControlNet learns this UNet as its partner). Borrowed outputs (FastCall.__call__): the
        caller hands them straight to the UNet's second half, whose graph copies them in before
        any other graph of the main pool replays (the ControlNet's own graphs have their own
        pool, and its residuals are always copies)."""
        stash, self.stash = self.stash, None
        origin = (sample, timestep, context, added)
        if stash is not None and stash.first is not None:
            if stash.taken_by(half, origin, ()):
                return stash.first
            stash.state.partner = None
        first = half(*args, borrow=True)
        if self.last is not None:
            state, seen = self.last[0](), self.last[1]
            if state is not None and seen.matches(*origin):
                state.partner = weakref.ref(half)
        return first

    def _joint(self, state: ControlState, call, partner, key, args: tuple, scale: float):
        """(the joint step's FastCall, its inputs) when its graph is ready; else None, and the
        worker is asked for it once its three parts are at their last upgrade."""
        second = state.second.get(key)
        up = second[0]() if second is not None else None
        if up is None:
            return None
        fns = (call.final_fn(key), partner.final_fn(partner.key(*args[:3], *args[4:])), up.final_fn(second[1]))
        # joint_step's order: the shared tensors, the hint embedding, the scale unless it is 1
        inputs = (*args[:3], *args[4:], args[3], *(() if scale == 1.0 else (self._scale(scale, args[0].device),)))
        fast = self._built(state, "controlnet step (one graph)", fns, inputs, len(args) - 1)
        return (fast, inputs) if fast is not None else None

    def _scale(self, scale: float, device) -> torch.Tensor:
        """The conditioning scale as a float32 tensor on the device, made once per value
        (torch.full: no host-to-device copy, so no sync); the 64 latest values are kept."""
        if (scale, device) not in self._scales:
            if len(self._scales) >= 64:  # users' weights are free numbers: the table must not grow with them
                del self._scales[next(iter(self._scales))]
            self._scales[(scale, device)] = torch.full((), scale, dtype=torch.float32, device=device)
        return self._scales[(scale, device)]

    def _drop(self) -> None:
        self.stash.state.partner = None
        self.stash = None


def joint_step(controlnets, first_half, second_half, shared: int, sides: list | None):
    """A ControlNet step, one unit or several, from its parts' functions: fn(x, t, context,
    *added, one hint embedding per unit[, one scale per unit]) → (*residuals, noise
    prediction), shared = 3 + len(added). Each unit's residuals are scaled (without scales: as
    they are, i.e. scale 1) and the units' summed in their order, as diffusers does. On a GPU
    each unit's ControlNet runs on a side stream of its own, forked from and joined to the
    capturing stream, beside the first half (one graph holds them all). The parts are held
    weakly, as everywhere a joint step is kept (_weak)."""
    count = len(controlnets)
    parts = _weak((*controlnets, first_half, second_half))

    def step(*tensors):
        *controlnets, first_half, second_half = _strong(parts)
        common, hints, scales = tensors[:shared], tensors[shared:shared + count], tensors[shared + count:]
        calls = [(*common[:3], hint, *common[3:]) for hint in hints]
        if sides is None:
            results = [controlnet(*args) for controlnet, args in zip(controlnets, calls)]
            first = first_half(*common)
        else:
            main = torch.cuda.current_stream(common[0].device)
            results = []
            for controlnet, args, side in zip(controlnets, calls, sides):
                side.wait_stream(main)
                with torch.cuda.stream(side):
                    results.append(controlnet(*args))
            first = first_half(*common)
            for side in sides:
                main.wait_stream(side)
        total = None
        for i, outs in enumerate(results):  # o * scale as _scaled does it: fp32 product, rounded to o's dtype
            if scales:
                outs = tuple((o.float() * scales[i]).to(o.dtype) for o in outs)
            total = outs if total is None else tuple(a + b for a, b in zip(total, outs))
        return (*total, *second_half(*first, *total))

    return step


def _weak(fns) -> tuple:
    """A joint step keeps its parts' functions weakly: a part's module (a ControlNet evicted
    from the cache, a replaced inpainting UNet) is freed with its own fast path, and the step
    (never replayed after, since the parts it is checked against are the live ones) with it."""
    return tuple(weakref.ref(fn) for fn in fns)


def _strong(refs: tuple) -> tuple:
    fns = tuple(ref() for ref in refs)
    if any(fn is None for fn in fns):
        raise RuntimeError("a joint ControlNet step outlived one of its parts")
    return fns


def _built_from(refs: tuple, fns: tuple) -> bool:
    return len(refs) == len(fns) and all(ref() is fn for ref, fn in zip(refs, fns))


def _same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


def _scaled(outs: tuple, scale: float) -> tuple:
    # sample * scale, as the ControlNet does (exact at scale 1, where nothing is multiplied)
    return outs if scale == 1.0 else tuple(o * scale for o in outs)
