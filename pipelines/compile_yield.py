"""The background compile steps aside while requests run.

torch.compile (dynamo tracing, AOTAutograd, inductor codegen) is pure Python holding the GIL
for minutes. A request running meanwhile in the same process launches eager kernels, each
releasing and re-taking the GIL, and waits for the compile thread at every re-take: measured
on an H200, first requests of a new mode took 2.2-3.3x their eager time. So the compile thread
pauses (blocked on a condition, GIL released) while any request is in progress.

How the compile thread notices, at no cost when no request runs:
- a garbage-collector callback (``gc.callbacks``) is the cheap checkpoint: tracing allocates
  constantly, so the compile thread runs a collection every ~7 ms (median; p99 30-80 ms,
  measured compiling the tiny UNet on CPU). If a request is running it installs the profile
  function below, in the compile thread only (``sys.setprofile`` is per thread);
- the profile function pauses at the thread's next Python event and removes itself first.
  An always-installed profile function would cost 1.8x on the compile itself (tracing runs
  de-specialised with a frame object per call; measured on CPU, Python 3.11), and on Python
  3.12 a profile function in one thread instruments every thread's code (the request's
  Python ran 2.2x slower in a micro-benchmark), so it is installed only for the moment of
  stepping aside.

No starvation, no deadlock: the paused thread may hold something a request needs (dynamo's
compile lock, a lock of its own the request waits for); each wait is bounded (`wait_s`) and
re-checked, and the pauses draw on a credit: ``share`` of every second earns pause time,
capped at ``burst_s``. Over any window of W seconds the compile is paused at most
burst_s + share·W, so under continuous load it still gets ≥ 1 − share of the time and
finishes; after a quiet spell a burst of requests is covered for burst_s / (1 − share)
seconds at full speed. The thread does not pause inside an import or a logging call (locks
every thread takes), nor inside the collector's callback (it would stop every thread's
collections), and never while it is profiled by something else.
"""
from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from contextlib import contextmanager

log = logging.getLogger(__name__)

# Defaults (FastPath.yield_share / yield_burst_s). 0.75: however busy the server, a compile
# takes at most 4x its quiet time. 5 s of credit: 20 s of requests back to back at full speed
# after a quiet spell (one first request of every mode, bench/gpu_speed.py, is ~8 s).
PAUSE_SHARE = 0.75
PAUSE_BURST_S = 5.0
PAUSE_WAIT_S = 0.25  # one wait, then re-check (a request may have ended, credit run out)

# Frames the thread must not pause in: the import system and logging take locks other
# threads (a request) take too.
_CRITICAL_FILES = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>")
_CRITICAL_MODULES = ("logging",)

_YIELDING: dict[int, "CompileGate"] = {}  # thread id -> its gate, while inside gate.yielding()
_installed = threading.Lock()


class _Requests:
    """Requests in progress in this process, whichever manager runs them: the GIL is one per
    process, so a compile steps aside for any request (also another device's, in a pool of
    managers in one process). Reentrant: a collection (the checkpoint) can run inside the
    gates' own code."""

    def __init__(self):
        self.cv = threading.Condition(threading.RLock())
        self.count = 0


_REQUESTS = _Requests()


def _gc_checkpoint(phase, info) -> None:
    """Runs in whichever thread collects: arms the profile function in a yielding thread."""
    if phase != "stop" or not _YIELDING:
        return
    ident = threading.get_ident()
    gate = _YIELDING.get(ident)
    if gate is not None and gate.running and gate._stepping != ident and sys.getprofile() is None:
        gate._arm_if_due()


def _install_checkpoint() -> None:
    with _installed:
        if _gc_checkpoint not in gc.callbacks:
            gc.callbacks.append(_gc_checkpoint)


def _where(frame) -> str | None:
    """'collector' inside the checkpoint (a pause there would hold the collector: no thread,
    not even gc.collect(), could collect), 'critical' inside an import or logging, else None."""
    while frame is not None:
        code = frame.f_code
        if code is _gc_checkpoint.__code__:
            return "collector"
        name = frame.f_globals.get("__name__")
        if code.co_filename in _CRITICAL_FILES or (isinstance(name, str) and name.partition(".")[0] in _CRITICAL_MODULES):
            return "critical"
        frame = frame.f_back
    return None


class CompileGate:
    """The manager's requests in progress (counted process-wide: overlapping and batched ones
    nest) and the pauses, with their credit, of the thread compiling inside ``yielding()``."""

    def __init__(self, share: float = PAUSE_SHARE, burst_s: float = PAUSE_BURST_S, wait_s: float = PAUSE_WAIT_S):
        if not 0.0 <= share < 1.0:
            raise ValueError(f"the pause share must be in [0, 1), got {share!r}")
        self.share, self.wait_s = share, wait_s
        # At least one whole wait's worth, else a pause could never start.
        self.burst_s = max(burst_s, (1.0 - share) * wait_s)
        self.paused_s = 0.0  # in total, for logs and benches (paused_total() adds a pause in progress)
        self.pauses = 0
        self._cv = _REQUESTS.cv  # a request's end wakes every paused compile
        self._profile = self._hook  # one object: the profile function removes itself while running
        self._credit = self.burst_s
        self._at = time.monotonic()
        self._paused_since: float | None = None
        self._stepping: int | None = None  # the thread inside _hook

    # ------------------------------------------------------------------ the manager's side
    @property
    def running(self) -> int:
        """Requests in progress in this process."""
        return _REQUESTS.count

    def request_started(self) -> None:
        with self._cv:
            _REQUESTS.count += 1

    def request_ended(self) -> None:
        with self._cv:
            _REQUESTS.count = max(0, _REQUESTS.count - 1)
            if not _REQUESTS.count:
                self._cv.notify_all()

    @contextmanager
    def request(self):
        self.request_started()
        try:
            yield
        finally:
            self.request_ended()

    @property
    def paused(self) -> bool:
        """A pause is in progress."""
        return self._paused_since is not None

    def paused_total(self) -> float:
        """Seconds paused so far, including a pause in progress."""
        with self._cv:
            since = self._paused_since
            return self.paused_s + (time.monotonic() - since if since is not None else 0.0)

    # ------------------------------------------------------------------ the compiling thread's side
    @contextmanager
    def yielding(self):
        """Around long Python work of a background thread (a compile): it pauses while requests run."""
        if self.share <= 0 or sys.getprofile() is not None:  # off, or something else profiles this thread
            yield
            return
        _install_checkpoint()
        ident = threading.get_ident()
        _YIELDING[ident] = self
        try:
            if self.running:
                self._arm_if_due()
            yield
        finally:
            _YIELDING.pop(ident, None)
            if sys.getprofile() is self._profile:
                sys.setprofile(None)

    def _refill(self, now: float) -> None:
        # Called with self._cv held. Credit earns `share` per second, spent 1 per second paused.
        self._credit = min(self.burst_s, self._credit + self.share * (now - self._at))
        self._at = now

    def _due(self) -> bool:
        """Enough credit for one whole wait (no flurry of tiny pauses: each arming re-instruments
        code on Python 3.12)."""
        if self.share <= 0:
            return False
        with self._cv:
            self._refill(time.monotonic())
            return self._credit >= (1.0 - self.share) * self.wait_s

    def _arm_if_due(self) -> None:
        if self._due():
            sys.setprofile(self._profile)

    def _hook(self, frame, event, arg) -> None:
        sys.setprofile(None)  # 3.12: a profile function instruments every thread's code; none while paused
        if not self.running:
            return
        self._stepping = threading.get_ident()  # no checkpoint re-arms it meanwhile
        try:
            where = _where(frame)
            if where == "collector":
                sys.setprofile(self._profile)  # steps aside at the first event after the collection
            elif where is None:
                self._step_aside()
            # inside an import or logging: the next collection re-arms it
        except Exception:  # noqa: BLE001 — a profile function that raises would break the compile
            log.exception("compile yield: stepping aside failed; the compile runs on without pausing")
            self.share = 0.0
        finally:
            self._stepping = None

    def _step_aside(self) -> None:
        with self._cv:
            self.pauses += 1
            while self.running:
                now = time.monotonic()
                self._refill(now)
                if self._credit <= 0:
                    return  # its share of the time: run until the next checkpoint finds credit again
                self._paused_since = now
                try:
                    # Bounded, then re-check; short enough that the credit never goes below 0.
                    self._cv.wait(min(self.wait_s, self._credit / (1.0 - self.share)))
                finally:
                    end = time.monotonic()
                    self._paused_since = None
                    self.paused_s += end - now
                    self._refill(end)
                    self._credit -= end - now
