"""The GPU fast path, applied in place to the shared modules so every task pipeline gets it.

On an H100/H200 the SD 1.5 UNet step is launch-bound (a CUDA graph alone gives 2.3×, see
shared/reference/MEASUREMENTS.md), so the levers are, in order of gain:
- CUDA graphs: the UNet call (plain, or with ControlNet residuals: its two halves, the first
  run beside the ControlNet on a second stream, control_overlap.py), each ControlNet call, the
  VAE encode and decode and the text encoder(s) are captured once per input signature and
  replayed (one launch instead of ~1000), and a ControlNet step, once its parts are compiled,
  as one graph; calls a graph cannot serve (unmerged LoRA adapters,
  tiling, attention masks, unusual arguments) run the ordinary forward;
- torch.compile (whole module, fullgraph) under those graphs, except the text encoders;
  channels_last, fused QKV;
- optionally (`fp8`, off by default, lossy) the UNet's large linears in fp8 on Ada/Hopper
  (pipelines/fp8.py), quantized before anything is graphed or compiled.

SDXL rides the same ladder: the UNet's and ControlNet's ``added_cond_kwargs`` (text_embeds,
time_ids) are flattened into positional tensors of the call's signature, both text encoders
are graphed with the hidden states SDXL reads, and a VAE that must run in fp32
(``force_upcast``) is kept in fp32 for good: diffusers otherwise converts it to fp32 and back
around every encode and decode, which reallocates the weights under a captured graph.

No visible warm-up: a new signature (mode, size, batch) is served at once by the ordinary
eager forward. When it repeats (the second call: inside the first request for the step loop's
modules, the second request for the VAE and text encoder) it is upgraded, first to a CUDA
graph of the eager forward (captured right there for step-loop modules, else by the worker
between requests), then to a CUDA graph of the compiled forward (compiled by a worker thread
concurrently with requests, 15-70 s cold, 2-13 s from the inductor cache).
Every upgrade is installed while the worker holds the manager's request lock, so the maths
of a request never changes halfway through it. `FastPathRuntime.wait_idle()` waits for all
upgrades (used by --warmup).

The compile yields to requests: tracing and codegen are pure Python holding the GIL, and a
request running meanwhile (eager launches, in-request graph captures) waited for the GIL at
every kernel launch (first requests of new modes took 2.2-3.3x their eager time on an H200).
The manager tells the runtime when a request starts and ends (`serving()`, a counter), and
the compile thread pauses while one runs, GIL released, with bounded waits and a cap on its
paused share of the time so that it always finishes (compile_yield.py).

Off on CPU/MPS unless asked for (tests): nothing here changes the maths, only how kernels
are launched and fused.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
import weakref
from collections import Counter, deque
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import split_forward
from .compile_yield import PAUSE_BURST_S, PAUSE_SHARE, CompileGate
from .control_overlap import ControlOverlap, ControlState

log = logging.getLogger(__name__)

COMPILE_MODES = ("full", "regional", "none")

# torch.compile is not safe to run in two threads at once (a pool of managers has one worker each).
_COMPILE_LOCK = threading.Lock()


@dataclass(frozen=True)
class FastPath:
    # "full": compiled in the background, per signature (docs/performance.md);
    # "regional": the repeated transformer blocks compiled in place at their first call
    # (inside the first request: faster to compile, slower steps); "none": graphs only.
    compile: str = "full"
    cuda_graphs: bool = True
    channels_last: bool = True
    fuse_qkv: bool = True
    compile_vae: bool = True  # the VAE decode too (diffusers' recipe does)
    # Per module: sizes × batch shapes kept fast. Each is one more compile in the background
    # (15-70 s cold) and one more CUDA graph (its static inputs and outputs; the graphs share one
    # memory pool). --warmup takes at most half (core/warmup.py). When all are taken, a new shape
    # that repeats takes the place of the one served longest ago if that one has been idle for
    # evict_idle_s (its graph is dropped; it upgrades again if it comes back); otherwise it runs
    # eager. The idle bar keeps two busy sets of shapes from evicting each other in turn.
    max_signatures: int = 16
    evict_idle_s: float = 600.0  # 0: never evict
    # fp8 linears in the UNet (pipelines/fp8.py; Ada/Hopper + torchao, else refused with a log
    # line): lossy, off by default. Layers with a side below fp8_min_features stay as they are.
    fp8: bool = False
    fp8_min_features: int = 256
    # fn -> compiled fn; None: torch.compile(fn, fullgraph=True, dynamic=False). Tests pass a fake.
    compiler: Callable | None = field(default=None, compare=False)
    # The background compile pauses while requests run (compile_yield.py): at most this share
    # of the time in the long run, plus this much pause credit for a burst; 0: never pauses.
    yield_share: float = PAUSE_SHARE
    yield_burst_s: float = PAUSE_BURST_S

    def __post_init__(self):
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES}, got {self.compile!r}")
        if not 0.0 <= self.yield_share < 1.0:
            raise ValueError(f"yield_share must be in [0, 1), got {self.yield_share!r}")


class FifoLock:
    """A lock taken in arrival order. The manager's requests hold it; back-to-back requests
    would otherwise starve the worker waiting to install an upgrade between them (a plain
    Lock lets the releasing thread take it straight back)."""

    def __init__(self):
        self._cv = threading.Condition(threading.Lock())
        self._next_ticket = 0
        self._serving = 0
        self._abandoned: set[int] = set()  # tickets given up before their turn

    def ticket(self) -> int:
        """A place in line; wait(ticket) then takes the lock in that order."""
        with self._cv:
            self._next_ticket += 1
            return self._next_ticket - 1

    def wait(self, ticket: int, unless=None) -> bool:
        """Hold the lock once it is this ticket's turn (True), or give the place up as soon as
        unless() is true (False; the line skips it): a request already served in another's
        batch (batching.py) stops waiting at once instead of at its turn."""
        with self._cv:
            self._cv.wait_for(lambda: self._serving == ticket or (unless is not None and unless()))
            if self._serving == ticket:
                return True
            self._abandoned.add(ticket)
            return False

    def acquire(self) -> bool:
        return self.wait(self.ticket())

    def release(self) -> None:
        with self._cv:
            self._serving += 1
            while self._serving in self._abandoned:
                self._abandoned.discard(self._serving)
                self._serving += 1
            self._cv.notify_all()

    def wake(self) -> None:
        """Re-check every waiter's unless() (after one was served elsewhere)."""
        with self._cv:
            self._cv.notify_all()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


def _signature(tensors) -> tuple:
    return tuple((tuple(t.shape), t.dtype, t.device) for t in tensors)


def _empty(value) -> bool:
    return value is None or (isinstance(value, (dict, list, tuple)) and not value)


ADDED_COND = ("text_embeds", "time_ids")  # SDXL's added_cond_kwargs, in signature order


def _is_xl(module) -> bool:
    return getattr(module.config, "addition_embed_type", None) == "text_time"


def _added_tensors(xl: bool, added) -> tuple | None:
    """The added_cond_kwargs as positional tensors: () for SD (which must get none), the two
    SDXL tensors in order, or None for anything else (the call then runs eager)."""
    if not xl:
        return () if _empty(added) else None
    if not isinstance(added, dict) or set(added) != set(ADDED_COND):
        return None
    values = tuple(added[k] for k in ADDED_COND)
    return values if all(torch.is_tensor(v) for v in values) else None


def _added(values) -> dict | None:
    return dict(zip(ADDED_COND, values)) if values else None


class CapturedGraph:
    """fn(*inputs) captured in a CUDA graph over static copies of the inputs."""

    def __init__(self, fn, inputs: list[torch.Tensor], pool):
        self.fn, self.inputs = fn, inputs  # fn: what a joint ControlNet step re-captures (control_overlap.py)
        with torch.cuda.device(inputs[0].device):
            started = time.perf_counter()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # one run off the main stream (workspaces), as capture requires
                fn(*inputs)
            side.synchronize()
            warmed = time.perf_counter()
            self.graph = torch.cuda.CUDAGraph()
            try:
                self.outputs = self._capture(fn, inputs, pool, side)
            except TypeError:  # another torch's capture_begin: the documented context manager
                with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
                    self.outputs = fn(*inputs)
            self.graph.replay()
            torch.cuda.synchronize()
            self.seconds = (round(warmed - started, 2), round(time.perf_counter() - warmed, 2))  # warm run, capture

    def _capture(self, fn, inputs, pool, stream):
        # Not torch.cuda.graph(): its empty_cache() hands every cached block back to the
        # driver, and the rest of the request then pays cudaMalloc/cudaFree (device syncs) again.
        with torch.cuda.stream(stream):
            self.graph.capture_begin(pool=pool, capture_error_mode="thread_local")
            try:
                outputs = fn(*inputs)
            finally:
                self.graph.capture_end()
        torch.cuda.current_stream().wait_stream(stream)
        return outputs

    def __call__(self, *tensors, borrow: bool = False):
        for static, value in zip(self.inputs, tensors):
            static.copy_(value)
        self.graph.replay()
        if borrow:  # see FastCall.__call__
            return tuple(self.outputs)
        # Cloned: graphs of one runtime share a memory pool and the next replay reuses it.
        return tuple(out.clone() for out in self.outputs)


class FastCall:
    """fn(*tensors) -> tuple of tensors, served per input signature by the fastest version
    ready: eager until the runtime's worker installs a graph or a compiled version."""

    def __init__(self, runtime: "FastPathRuntime", name: str, fn, compile: bool = True, inline: bool = False,
                 side: bool = False, lossy: bool = False, twin: Callable[[], Callable] | None = None,
                 prebuilt: bool = False):
        self.runtime, self.name, self.fn, self.compile = runtime, name, fn, compile
        # inline: called many times per request (a step loop), so the second call of a new
        # signature captures the eager graph right there (same kernels, same maths as eager).
        self.inline = inline
        # side: replayed on a second stream beside other graphs (control_overlap.py), so its
        # graphs get a memory pool of their own (graphs of one pool must run one at a time).
        self.side = side
        # lossy: a view for a lossy option (Turbo, token merging): compiled only once no plain
        # call's compile waits, so an opt-in never delays the upgrade of what everyone runs.
        self.lossy = lossy
        # twin: makes a fresh fn with Python state of its own (a view's stand-ins and lists): the
        # worker then compiles a twin per signature, so its runs (trace, first run, capture)
        # never touch the state a request's eager calls of fn are using at that moment.
        self.twin = twin
        # prebuilt: fn is made of other calls' fast versions (a joint ControlNet step): the
        # worker neither compiles it nor captures an eager graph first, it captures fn as it is.
        self.prebuilt = prebuilt
        self.fast: dict[tuple, tuple[Callable, str]] = {}  # signature -> (callable, how)
        # Signatures submitted to the worker (the fast ones' places) -> when each was last called.
        self.seen: dict[tuple, float] = {}
        self.count: dict[tuple, int] = {}  # calls per signature
        self.evicted = 0  # signatures dropped for newer ones (_room)
        self.served: Counter = Counter()  # how -> calls (eager, eager-graph, compiled, compiled-graph)
        self._compiled = None

    def compiled(self):
        if self._compiled is None:
            self._compiled = self._compiler()(self.fn)
        return self._compiled

    def to_compile(self):
        """What the worker compiles for one more signature: the shared compiled fn, or a fresh
        compiled twin (one per signature: see `twin`); a prebuilt fn as it is."""
        if self.prebuilt:
            return self.fn
        return self.compiled() if self.twin is None else self._compiler()(self.twin())

    def _compiler(self):
        return self.runtime.config.compiler or (lambda fn: torch.compile(fn, fullgraph=True, dynamic=False))

    def ready(self, *tensors: torch.Tensor) -> bool:
        """Served by a graph or compiled code for these inputs (not eager, nor a capture now)."""
        return _signature(tensors) in self.fast

    def key(self, *tensors: torch.Tensor) -> tuple:
        return _signature(tensors)

    def final_fn(self, key: tuple):
        """The function behind this signature's fast version once no further upgrade will come
        (compiled; an eager graph where nothing compiles), else None."""
        entry = self.fast.get(key)
        last = "compiled" if self.runtime.compiles and self.compile else "eager-graph"
        if entry is None or not entry[1].startswith(last):
            return None
        return entry[0].fn if isinstance(entry[0], CapturedGraph) else entry[0]

    def prepare(self, *tensors: torch.Tensor) -> None:
        """Ask the worker for this signature's fast version without calling fn now."""
        key = _signature(tensors)
        if key not in self.seen and self._room():
            self.seen[key] = self.runtime.clock()
            self.runtime.submit(self, key, tensors)

    def __call__(self, *tensors: torch.Tensor, borrow: bool = False) -> tuple:
        """borrow: a CUDA graph's own output buffers, not copies of them, for a caller that
        reads them before any other graph of the runtime's main memory pool replays (the
        next replay may reuse their memory): one copy per output saved."""
        key = _signature(tensors)
        entry = self.fast.get(key)
        if key in self.seen:
            self.seen[key] = self.runtime.clock()
        if entry is not None:
            self.served[entry[1]] += 1
            if borrow and isinstance(entry[0], CapturedGraph):
                return entry[0](*tensors, borrow=True)
            return entry[0](*tensors)
        # Only signatures that repeat are upgraded: the second call submits the work (a
        # one-off call, e.g. the preview's calibration encode, would compile for nothing).
        count = self.count[key] = self.count.get(key, 0) + 1
        if count >= 2 and key not in self.seen and self._room():
            self.seen[key] = self.runtime.clock()
            graph = None
            if self.inline and self.runtime.graphs:
                graph = self.runtime.capture_inline(self, key, tensors)
            self.runtime.submit(self, key, tensors)  # the worker skips a graph captured here
            if graph is not None:
                self.served["eager-graph"] += 1
                return graph(*tensors)
        self.served["eager"] += 1
        return self.fn(*tensors)

    def _room(self) -> bool:
        """A place for one more signature: free, or the least recently used one's if it has been
        idle for evict_idle_s (then dropped: the worker skips its queued upgrades)."""
        config = self.runtime.config
        if len(self.seen) < config.max_signatures:
            return True
        if config.evict_idle_s <= 0 or not self.seen:
            return False
        oldest = min(self.seen, key=self.seen.get)
        if self.runtime.clock() - self.seen[oldest] < config.evict_idle_s:
            return False
        for table in (self.seen, self.fast, self.count):
            table.pop(oldest, None)
        self.evicted += 1
        self.runtime._note(f"{self.name} {list(oldest[0][0])}: dropped (idle longest) for a new shape")
        return True


class FastPathRuntime:
    """One per manager: wraps its modules, and owns the worker thread that compiles and
    captures in the background and the lock (the manager's) under which upgrades switch."""

    def __init__(self, config: FastPath, device: torch.device, lock: threading.Lock):
        self.config, self.device, self.lock = config, torch.device(device), lock
        self.clock = time.monotonic  # FastCall's idle times (a test may step it by hand)
        self.graphs = config.cuda_graphs and self.device.type == "cuda"
        self.fp8 = False  # set by apply_fast_path once the device is checked
        self.compiles = config.compile == "full"
        # Weak: an evicted ControlNet (or replaced 9-channel UNet) is freed with its graphs.
        self.calls: weakref.WeakSet[FastCall] = weakref.WeakSet()
        self.applied: list[str] = []
        self.events: list[tuple[float, str]] = []  # (time.time(), what): for logs and benches
        self.pool = None
        self.side_pool = None
        self.overlap = ControlOverlap(self)
        self._graph_jobs: deque = deque()  # quick eager-graph captures go first
        self._compile_jobs: deque = deque()
        self._busy = False
        self._closed = False
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        # Bumped before and after a request changes module state a trace reads (LoRA layers
        # merged/disabled): a background trace that overlapped a change is redone.
        self.state_generation = 0
        # Requests in progress (the manager says, serving()); the compile pauses meanwhile.
        self.gate = CompileGate(config.yield_share, config.yield_burst_s)

    def serving(self):
        """Context manager around one request (or batch) on the device: background compiles
        step aside until it ends (every runtime's in this process: they share the GIL). Nests:
        overlapping and batched requests count."""
        return self.gate.request()

    def module_state_changed(self) -> None:
        self.state_generation += 1

    # ------------------------------------------------------------------ wrapping modules
    def call(self, name: str, fn, compile: bool = True, inline: bool = False, side: bool = False,
             lossy: bool = False, twin: Callable[[], Callable] | None = None, prebuilt: bool = False) -> FastCall:
        fast = FastCall(self, name, fn, compile, inline, side, lossy, twin, prebuilt)
        self.calls.add(fast)
        return fast

    def adopt(self, module):
        """Put a module loaded after the base (ControlNet, 9-channel UNet, the SDXL refiner's
        UNet and text encoder) on the fast path, once. Returns the module."""
        if module is None or getattr(module, "_sd_studio_fast", None) is not None:
            return module
        kind = type(module).__name__
        if kind == "ControlNetModel":
            _prepare(module, self.config)
            _wrap_controlnet(self, module)
        elif kind == "UNet2DConditionModel":
            _prepare(module, self.config, fp8=self.fp8)
            _wrap_unet(self, module)
        elif kind in TEXT_ENCODERS and self.graphs:
            _wrap_text_encoder(self, module)
        elif kind == "MultiControlNetModel":
            _wrap_multi_controlnet(self, module)
        return module

    def served(self) -> Counter:
        total = Counter()
        for call in self.calls:
            total.update(call.served)
        return total

    # ------------------------------------------------------------------ the worker
    def submit(self, call: FastCall, key, tensors) -> None:
        compiles = (self.compiles and call.compile) or call.prebuilt
        if not (self.graphs or compiles):
            return
        inputs = [t.detach().clone() for t in tensors]  # the graphs' static buffers
        with self._cv:
            if self._closed:
                return
            if self.graphs and not call.prebuilt:
                self._graph_jobs.append((call, key, inputs))
            if compiles:  # its own example: requests write into the eager graph's buffers meanwhile
                example = [t.clone() for t in inputs] if self.graphs else inputs
                self._compile_jobs.append((call, key, inputs, example))
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=f"fast-path {self.device}", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """True once every submitted upgrade is installed (or failed and logged)."""
        with self._cv:
            return self._cv.wait_for(lambda: self._closed or not (self._busy or self._graph_jobs or self._compile_jobs),
                                     timeout)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._graph_jobs.clear()
            self._compile_jobs.clear()
            self._cv.notify_all()

    def _note(self, text: str) -> None:
        self.events.append((time.time(), text))
        log.info("fast path: %s", text)

    def _work(self) -> None:
        _allow_an_entry_per_signature()  # the compiles run in this thread
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._closed or self._graph_jobs or self._compile_jobs)
                if self._closed:
                    return
                graph_jobs = list(self._graph_jobs)
                self._graph_jobs.clear()
                job = None if graph_jobs else self._next_compile()
                self._busy = True
            try:
                if graph_jobs:
                    self._capture_eager(graph_jobs)
                else:
                    self._compile(*job)
            except Exception:  # the eager (or eager-graph) path keeps serving
                log.exception("fast path: background upgrade failed")
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _next_compile(self):
        """A prebuilt step first (a capture of parts already compiled: a fraction of a second),
        then the first queued compile of a plain call, else the first of a lossy option's view."""
        job = next((job for job in self._compile_jobs if job[0].prebuilt), None)
        job = job or next((job for job in self._compile_jobs if not job[0].lossy), self._compile_jobs[0])
        self._compile_jobs.remove(job)
        return job

    def _capture(self, fn, inputs, side: bool = False) -> CapturedGraph:
        if side:
            if self.side_pool is None:
                self.side_pool = torch.cuda.graph_pool_handle()
            return CapturedGraph(fn, inputs, self.side_pool)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()  # graphs of all signatures share one memory pool
        return CapturedGraph(fn, inputs, self.pool)

    def capture_inline(self, call: FastCall, key, tensors):
        """The eager graph captured by the requesting thread (which holds the request lock),
        or None when capture fails (the call then stays eager)."""
        started = time.perf_counter()
        try:
            with torch.no_grad():
                graph = self._capture(call.fn, [t.detach().clone() for t in tensors], call.side)
        except Exception:
            log.exception("fast path: capture of %s failed; it stays eager", call.name)
            return None
        call.fast[key] = (graph, "eager-graph")
        self._note(f"{call.name} {list(tensors[0].shape)}: eager CUDA graph in-request in "
                   f"{time.perf_counter() - started:.2f}s (warm run, capture: {graph.seconds})")
        return graph

    def _capture_eager(self, jobs) -> None:
        with self.lock, torch.no_grad():  # between requests
            for call, key, inputs in jobs:
                if self._closed or key in call.fast or key not in call.seen:  # done, or dropped meanwhile
                    continue
                started = time.perf_counter()
                try:
                    graph = self._capture(call.fn, inputs, call.side)
                except Exception:  # that signature stays eager (its compile job may still succeed)
                    log.exception("fast path: capture of %s failed", call.name)
                    continue
                call.fast[key] = (graph, "eager-graph")
                self._note(f"{call.name} {list(inputs[0].shape)}: eager CUDA graph in "
                           f"{time.perf_counter() - started:.2f}s (warm run, capture: {graph.seconds})")

    def _compile(self, call: FastCall, key, inputs, example, tries: int = 1) -> None:
        if key not in call.seen:  # dropped for a newer shape while queued
            return
        started = time.perf_counter()
        paused = self.gate.paused_total()
        generation = self.state_generation
        with _COMPILE_LOCK, torch.no_grad(), torch.cuda.device(self.device) if self.device.type == "cuda" else nullcontext():
            compiled = call.to_compile()
            # Requests meanwhile launch many small ops, each releasing and re-taking the GIL;
            # with the default 5 ms switch interval every re-take could wait that long.
            interval = sys.getswitchinterval()
            sys.setswitchinterval(min(interval, 0.0002))
            try:
                with self.gate.yielding():  # pauses while requests run (compile_yield.py)
                    compiled(*example)  # traces, compiles and runs once, concurrently with requests
            finally:
                sys.setswitchinterval(interval)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        compile_s = time.perf_counter() - started
        paused = self.gate.paused_total() - paused
        with self.lock, torch.no_grad():  # between requests
            if self._closed or key not in call.seen:  # closed, or dropped while it compiled
                return
            if generation != self.state_generation:  # a LoRA switch overlapped the trace
                if tries < 3:
                    with self._cv:
                        self._compile_jobs.append((call, key, inputs, example, tries + 1))
                self._note(f"{call.name} {list(inputs[0].shape)}: traced during a LoRA switch; "
                           + ("traced again" if tries < 3 else "stays on the eager graph"))
                return
            how = "compiled" if self.compiles or not call.prebuilt else "eager"  # a prebuilt fn: its parts' kind
            if self.graphs:
                call.fast[key] = (self._capture(compiled, inputs, call.side), f"{how}-graph")
            else:
                call.fast[key] = (compiled, how)
        self._note(f"{call.name} {list(inputs[0].shape)}: {'built' if call.prebuilt else 'compiled'} in {compile_s:.1f}s"
                   f"{f' ({paused:.1f}s of it paused for requests)' if paused >= 0.05 else ''}, installed")


# ---------------------------------------------------------------------- module wrappers
def _prepare(module, config: FastPath, fp8: bool = False) -> None:
    if config.channels_last:
        module.to(memory_format=torch.channels_last)
    if config.fuse_qkv and hasattr(module, "fuse_qkv_projections"):
        module.fuse_qkv_projections()
    if fp8:  # after fusing: the fused to_qkv is the layer that runs
        from .fp8 import quantize_unet_fp8

        try:
            quantize_unet_fp8(module, config.fp8_min_features)
        except Exception:  # noqa: BLE001 — layers already converted keep working; the rest stay as they are
            log.exception("fp8: quantizing the UNet failed; its remaining layers stay in %s", next(module.parameters()).dtype)


def _lora_unsafe(module) -> bool:
    """LoRA layers that may act unmerged (extra matmuls a graph of base_layer(x) would skip)
    take the ordinary forward. Merged-only ones (adapters.py, with the fast path) stay fast:
    the merge changes weight values in place, which graphs and compiled code read."""
    if getattr(module, "_sd_studio_lora_merged_only", False):
        return False
    return getattr(module, "_hf_peft_config_loaded", False) or getattr(module, "_sd_studio_has_lora", False)


def _as_float_timestep(timestep, device):
    # The UNet embeds timesteps[:, None].float(): casting here is exact, and integer
    # (DDIM, RePaint) and float (Euler) timesteps then share one graph and one compile.
    return timestep.to(device=device, dtype=torch.float32)


def _wrap_unet(runtime: FastPathRuntime, unet) -> None:
    """Route UNet calls (sample, t, text embeddings[, SDXL text_embeds + time_ids][, ControlNet
    residuals]) through FastCalls."""
    inner = unet.forward
    xl = _is_xl(unet)

    def plain_core(x, t, c, *added):
        return (inner(x, t, c, added_cond_kwargs=_added(added), return_dict=False)[0],)

    plain = runtime.call("unet", plain_core, inline=True)
    split = split_forward.splittable(unet)
    if split:  # with ControlNet residuals: two halves, the first one run beside the ControlNet (control_overlap.py)
        first_half = runtime.call("unet down+mid", lambda x, t, c, *added: split_forward.down_mid(unet, x, t, c, _added(added)),
                                  inline=True)
    with_residuals: dict[int, FastCall] = {}
    allowed = {"timestep_cond", "cross_attention_kwargs", "attention_mask",
               "encoder_attention_mask", "class_labels", "down_intrablock_additional_residuals"}
    extra = len(ADDED_COND) if xl else 0  # positional tensors between the context and the residuals

    def residual_call(count: int) -> FastCall:
        if count not in with_residuals and split:
            def core(emb, context, sample, *rest):  # rest: the count - 1 skips, then the residuals
                skips, res = rest[:count - 1], rest[count - 1:]
                return (split_forward.up(unet, emb, context, sample, skips, res[:-1], res[-1]),)
            with_residuals[count] = runtime.call("unet up+residuals", core, inline=True)
        elif count not in with_residuals:
            def core(x, t, c, *rest):
                added, res = rest[:extra], rest[extra:]
                return (inner(x, t, c, added_cond_kwargs=_added(added), down_block_additional_residuals=tuple(res[:-1]),
                              mid_block_additional_residual=res[-1], return_dict=False)[0],)
            with_residuals[count] = runtime.call("unet+controlnet residuals", core, inline=True)
        return with_residuals[count]

    def forward(sample, timestep, encoder_hidden_states, *args, return_dict: bool = True, **kwargs):
        down = kwargs.get("down_block_additional_residuals")
        mid = kwargs.get("mid_block_additional_residual")
        added = _added_tensors(xl, kwargs.get("added_cond_kwargs"))
        rest = {k: v for k, v in kwargs.items()
                if k not in ("down_block_additional_residuals", "mid_block_additional_residual", "added_cond_kwargs")}
        simple = (not args and added is not None and set(rest) <= allowed and all(_empty(v) for v in rest.values())
                  and torch.is_tensor(timestep) and (down is None) == (mid is None)
                  and not _lora_unsafe(unet))
        if not simple:
            return inner(sample, timestep, encoder_hidden_states, *args, return_dict=return_dict, **kwargs)
        t = _as_float_timestep(timestep, sample.device)
        if down is None:
            out = plain(sample, t, encoder_hidden_states, *added)[0]
        elif split:
            out = runtime.overlap.unet_with_residuals(first_half, sample, timestep, encoder_hidden_states, added,
                                                      (sample, t, encoder_hidden_states, *added), (*down, mid),
                                                      residual_call)
        else:
            out = residual_call(len(down) + 1)(sample, t, encoder_hidden_states, *added, *down, mid)[0]
        if return_dict:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=out)
        return (out,)

    unet.forward = forward
    unet._sd_studio_fast = plain


def _wrap_controlnet(runtime: FastPathRuntime, controlnet) -> None:
    """Graph/compile a ControlNet at conditioning scale 1 and apply the scale outside, so one
    graph serves every weight and guidance window (outside it the pipeline passes scale 0).
    The control image's embedding is computed once per request (split_forward.py) and, once
    graphed, the ControlNet runs on a second stream beside its UNet's first half
    (control_overlap.py)."""
    inner = controlnet.forward
    xl = _is_xl(controlnet)
    split = split_forward.splittable(controlnet)
    calls: dict[bool, FastCall] = {}
    states: dict[bool, ControlState] = {}
    memo: list = [None]  # (weakref to the control image tensor, its version and the weights' generation, embedding)
    # Once per request: an eager graph (one launch) is all it needs; a background compile would
    # save ~0.1 ms per request and compete with requests for a while.
    hint = (runtime.call("controlnet hint", lambda cond: (split_forward.hint_embedding(controlnet, cond),), compile=False)
            if split else None)

    def call_for(guess_mode: bool) -> FastCall:
        if guess_mode not in calls:
            if split:
                def core(x, t, c, embedding, *added):
                    return split_forward.controlnet_body(controlnet, x, t, c, embedding, _added(added), guess_mode)
            else:
                def core(x, t, c, cond, *added):
                    down, mid = inner(x, t, c, cond, 1.0, added_cond_kwargs=_added(added), guess_mode=guess_mode,
                                      return_dict=False)
                    return (*down, mid)
            calls[guess_mode] = runtime.call("controlnet", core, inline=True, side=split)
            states[guess_mode] = ControlState()
        return calls[guess_mode]

    def embedded(cond):
        """The pipeline passes the same control image tensor at every step of a request."""
        stamp = (cond._version, runtime.state_generation)
        if memo[0] is None or memo[0][0]() is not cond or memo[0][1] != stamp:
            memo[0] = (weakref.ref(cond), stamp, hint(cond)[0])
        return memo[0][2]

    def unit(sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale=1.0, class_labels=None,
             timestep_cond=None, attention_mask=None, added_cond_kwargs=None, cross_attention_kwargs=None,
             guess_mode=False):
        """(its ControlState, FastCall, the call's tensors, their origin) for a call the fast
        path serves, else None. Also used by several units' wrapper (_wrap_multi_controlnet)."""
        added = _added_tensors(xl, added_cond_kwargs)
        simple = (added is not None and all(_empty(v) for v in (class_labels, timestep_cond, attention_mask,
                                                                 cross_attention_kwargs))
                  and torch.is_tensor(timestep) and torch.is_tensor(controlnet_cond)
                  and isinstance(conditioning_scale, (int, float)) and not _lora_unsafe(controlnet))
        if not simple:
            return None
        call = call_for(bool(guess_mode))
        second = embedded(controlnet_cond) if split else controlnet_cond
        args = (sample, _as_float_timestep(timestep, sample.device), encoder_hidden_states, second, *added)
        return states[bool(guess_mode)], call, args, (sample, timestep, encoder_hidden_states, added)

    def forward(sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale=1.0, class_labels=None,
                timestep_cond=None, attention_mask=None, added_cond_kwargs=None, cross_attention_kwargs=None,
                guess_mode=False, return_dict=True):
        served = unit(sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale, class_labels,
                      timestep_cond, attention_mask, added_cond_kwargs, cross_attention_kwargs, guess_mode)
        if served is None:
            return inner(sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale, class_labels,
                         timestep_cond, attention_mask, added_cond_kwargs, cross_attention_kwargs, guess_mode, return_dict)
        state, call, args, origin = served
        outs = runtime.overlap.run_controlnet(state, call, args, conditioning_scale, origin)
        down, mid = tuple(outs[:-1]), outs[-1]
        if return_dict:
            from diffusers.models.controlnets.controlnet import ControlNetOutput

            return ControlNetOutput(down_block_res_samples=down, mid_block_res_sample=mid)
        return down, mid

    controlnet.forward = forward
    controlnet._sd_studio_fast = calls
    controlnet._sd_studio_unit = (forward, unit)  # unit serves only while forward is the one installed (Turbo reroutes it)


def _wrap_multi_controlnet(runtime: FastPathRuntime, multi) -> None:
    """Several units (diffusers' MultiControlNetModel, made per request): when every unit's
    ControlNet is on the fast path and its call is one the fast path serves, the units go to
    the overlap together (control_overlap.py: run_units), which sums their residuals as
    diffusers does and, once learned, runs the whole step as one graph."""
    inner = multi.forward

    def served_units(sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale, *rest,
                     guess_mode=False) -> list | None:
        """[(state, call, tensors, origin, scale)] per unit, or None when any unit is not one the
        fast path serves (or is rerouted: Turbo; guess mode's residuals are padded per unit)."""
        if guess_mode or not (isinstance(controlnet_cond, (list, tuple)) and isinstance(conditioning_scale, (list, tuple))
                              and len(controlnet_cond) == len(conditioning_scale) == len(multi.nets)):
            return None
        units = []
        for net, cond, scale in zip(multi.nets, controlnet_cond, conditioning_scale):
            hooks = getattr(net, "_sd_studio_unit", None)
            served = (hooks[1](sample, timestep, encoder_hidden_states, cond, scale, *rest)
                      if hooks is not None and net.forward is hooks[0] else None)
            if served is None:
                return None
            units.append((*served, scale))
        return units

    def forward(sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale, class_labels=None,
                timestep_cond=None, attention_mask=None, added_cond_kwargs=None, cross_attention_kwargs=None,
                guess_mode=False, return_dict=True):
        units = served_units(sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale, class_labels,
                             timestep_cond, attention_mask, added_cond_kwargs, cross_attention_kwargs, guess_mode=guess_mode)
        if units is None:
            with runtime.overlap.units_apart():
                return inner(sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale, class_labels,
                             timestep_cond, attention_mask, added_cond_kwargs, cross_attention_kwargs, guess_mode,
                             return_dict)
        return runtime.overlap.run_units(units)  # (down residuals, mid residual), as diffusers' model returns them

    multi.forward = forward
    multi._sd_studio_fast = forward


def _wrap_vae_decode(runtime: FastPathRuntime, vae, compile_it: bool, cast: bool = False) -> None:
    """cast: the VAE is pinned to fp32 (_pin_vae_fp32) and half-precision latents come in."""
    inner = vae.decode
    fast = runtime.call("vae decode", lambda z: (inner(z, return_dict=False)[0],), compile=compile_it)

    def decode(z, return_dict: bool = True, generator=None):
        if cast:
            z = z.to(torch.float32)
        if getattr(vae, "use_tiling", False) or getattr(vae, "use_slicing", False):
            return inner(z, return_dict=return_dict)
        sample = fast(z)[0]
        if return_dict:
            from diffusers.models.autoencoders.vae import DecoderOutput

            return DecoderOutput(sample=sample)
        return (sample,)

    vae.decode = decode
    vae._sd_studio_fast = fast


def _wrap_vae_encode(runtime: FastPathRuntime, vae, compile_it: bool, cast: bool = False) -> None:
    """The encoder half (img2img, inpainting): diffusers' encode() builds the posterior from
    the moments our _encode returns."""
    inner = vae._encode
    fast = runtime.call("vae encode", lambda x: (inner(x),), compile=compile_it)

    def _encode(x):
        if cast:
            x = x.to(torch.float32)
        if getattr(vae, "use_tiling", False):
            return inner(x)
        return fast(x)[0]

    vae._encode = _encode


TEXT_ENCODERS = ("CLIPTextModel", "CLIPTextModelWithProjection")  # SD's, SDXL's first and second


def _wrap_text_encoder(runtime: FastPathRuntime, text_encoder) -> None:
    """Plain prompt encodings (token ids in; last hidden state and pooled output — or SDXL's
    projected text_embeds — out, and with ``output_hidden_states`` every layer's hidden state,
    which SDXL and CLIP skip read) replay an eager CUDA graph: ~200 (CLIP-L) to ~500 (bigG)
    small launches per prompt otherwise. Not compiled: a handful of calls per request at
    77·k tokens, already one launch each as a graph, while every chunk count would be a
    compile of its own. Attention masks, position ids and LoRA adapters take the ordinary forward."""
    kind = type(text_encoder).__name__
    if kind not in TEXT_ENCODERS or getattr(text_encoder, "_sd_studio_fast", None) is not None:
        return
    inner = text_encoder.forward
    projected = kind == "CLIPTextModelWithProjection"

    def outputs(out, hidden: bool) -> tuple:
        first = out.text_embeds if projected else out.pooler_output
        return (out.last_hidden_state, first, *(out.hidden_states if hidden else ()))

    fast = {hidden: runtime.call("text encoder 2" if projected else "text encoder",
                                 lambda ids, hidden=hidden: outputs(inner(input_ids=ids, output_hidden_states=hidden), hidden),
                                 compile=False)
            for hidden in (False, True)}

    def forward(input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        hidden = bool(kwargs.pop("output_hidden_states", False))
        simple = (torch.is_tensor(input_ids) and attention_mask is None and position_ids is None
                  and all(_empty(v) or v is False for v in kwargs.values())
                  and not _lora_unsafe(text_encoder))
        if not simple:
            return inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         output_hidden_states=hidden, **kwargs)
        last, first, *states = fast[hidden](input_ids)
        states = tuple(states) if hidden else None
        if projected:
            from transformers.models.clip.modeling_clip import CLIPTextModelOutput

            return CLIPTextModelOutput(text_embeds=first, last_hidden_state=last, hidden_states=states)
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=first, hidden_states=states)

    text_encoder.forward = forward
    text_encoder._sd_studio_fast = fast


def _pin_vae_fp32(vae) -> bool:
    """An SDXL VAE that must run in fp32 (``force_upcast``: its fp16 decoder overflows) stays in
    fp32 from now on. diffusers' SDXL pipelines and our vae_precision would otherwise convert
    it to fp32 and back around every encode and decode: new weight storage each time, under
    graphs captured on the old one. Only dtype changes are dropped; device moves still act.
    Costs the VAE's size once more (≈ 160 MiB for SDXL's); the maths is the one diffusers runs."""
    if not getattr(vae.config, "force_upcast", False):
        return False
    vae.to(torch.float32)
    plain_to = vae.to

    def to(*args, **kwargs):
        device, _dtype, non_blocking, memory_format = torch._C._nn._parse_to(*args, **kwargs)
        if device is not None:
            plain_to(device, non_blocking=non_blocking)
        if memory_format is not None:
            plain_to(memory_format=memory_format)
        return vae

    vae.to = to
    return True


def _allow_an_entry_per_signature() -> None:
    """Each signature is one more dynamo entry for the same code (dynamic=False), and view calls
    of several models share code (turbo.py): raise dynamo's limit (8) for the calling thread.
    It is a per-thread setting in torch 2.14, so the worker thread calls this too."""
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)


def apply_fast_path(pipe, config: FastPath, device=None, lock: threading.Lock | None = None) -> FastPathRuntime:
    """Apply the fast path in place to pipe's UNet and VAE (shared by every derived task
    pipeline). `lock` is the one requests hold (upgrades switch only between requests).
    The runtime's `applied` says what was done, for logs and benchmarks."""
    _allow_an_entry_per_signature()
    runtime = FastPathRuntime(config, device or pipe.unet.device, lock or threading.Lock())
    applied = runtime.applied
    unet, vae = pipe.unet, pipe.vae
    if config.fp8:
        from .fp8 import fp8_unavailable_reason

        reason = fp8_unavailable_reason(runtime.device)
        if reason:
            log.warning("%s Generating without it.", reason)
        runtime.fp8 = reason is None
    _prepare(unet, config, fp8=runtime.fp8)
    if runtime.fp8:
        applied.append(f"fp8 ({len(getattr(unet, '_sd_studio_fp8', []))} UNet linears)")
    if config.channels_last:
        vae.to(memory_format=torch.channels_last)
        applied.append("channels_last")
    if config.fuse_qkv:
        applied.append("fused_qkv")
    if config.compile == "regional":
        unet.compile_repeated_blocks(fullgraph=True)
        applied.append("regional_compile")
    elif config.compile == "full":
        applied.append("background_compile")
    _wrap_unet(runtime, unet)
    pinned = _is_xl(unet) and _pin_vae_fp32(vae)
    if pinned:
        applied.append("sdxl_vae_fp32")
    _wrap_vae_decode(runtime, vae, compile_it=config.compile == "full" and config.compile_vae, cast=pinned)
    _wrap_vae_encode(runtime, vae, compile_it=config.compile == "full" and config.compile_vae, cast=pinned)
    if config.cuda_graphs and runtime.graphs:  # nothing to gain from the wrapper without graphs
        for name in ("text_encoder", "text_encoder_2"):
            if getattr(pipe, name, None) is not None:
                _wrap_text_encoder(runtime, getattr(pipe, name))
    if config.cuda_graphs:
        applied.append("cuda_graphs")
    log.info("fast path: %s", ", ".join(applied))
    return runtime
