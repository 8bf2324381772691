"""Several GPUs in one host, one worker process per GPU: `--devices all` (or cuda:0,cuda:1).

Each worker is a spawned process that sees only its own GPU (CUDA_VISIBLE_DEVICES), owns a
PipelineManager with the fast path on (CUDA graphs included: a pool of threads in one process
had to turn them off, and shared one GIL), and runs one job (or one batch) at a time. The
front end keeps the Backend protocol: requests go to the least busy worker and cross the
process boundary pickled, the result comes back, and StepInfo events (with previews) only for
a caller who reads them (stream(), run() with on_step: a plain run() costs the worker no
preview); Interrupt and Skip are forwarded to the worker running the job, a model load goes to
every worker. Workers sharing a host are pinned near their GPUs (serving/placement.py).

A worker that dies (a driver fault, out of host memory, killed) fails its jobs with a
sentence for the user and is started again with the current model, while the others serve.
"""
from __future__ import annotations

import atexit
import itertools
import logging
import multiprocessing
import os
import pickle
import queue
import socket
import threading
import time
import traceback
from contextlib import contextmanager

from pipelines.core.errors import GenerationError, ModelLoadError, RequestError, StudioError
from pipelines.core.jobs import GenerationResult, Job, StepInfo, result_of

log = logging.getLogger(__name__)

START_TIMEOUT_S = 900.0  # a worker's start: importing torch, CUDA init (a model load is timed apart)
POLL_S = 0.1  # how often a waiting front end looks at its job's Interrupt / Skip buttons
LOST_CHECK_S = 1.0  # a job nobody else can interrupt only looks for its worker's death
COUNT_TIMEOUT_S = 0.5  # the live token counter never waits longer than this
WAIT_FOR_WORKER_S = 300.0  # a job arriving while every worker restarts waits this long for one
INFO_IDLE_S = 1.0  # a worker idle this long sends the memory report its last jobs skipped
INFO_UNDER_LOAD_S = 30.0  # under a steady load, the memory report is at most this old
USER_ERRORS = {cls.__name__: cls for cls in (RequestError, GenerationError, ModelLoadError, StudioError)}


# ----------------------------------------------------------------------------- the worker process
def _pack(message) -> bytes:
    """Pickled here, in the sending thread: multiprocessing would pickle in its feeder thread
    and drop a message it cannot pickle without telling anyone (the front end would wait)."""
    try:
        return pickle.dumps(message)
    except Exception as error:  # noqa: BLE001 — becomes the job's error instead
        kind, call_id, _ = message
        return pickle.dumps(("error", call_id, ("RuntimeError", f"unpicklable {kind}: {error}", traceback.format_exc())))


def _error_payload(error: BaseException) -> tuple[str, str, str]:
    """(the user-facing error class it is, or RuntimeError for a bug; message; traceback)."""
    name = next((c.__name__ for c in type(error).__mro__ if c.__name__ in USER_ERRORS), "RuntimeError")
    return name, str(error), traceback.format_exc()


DEVICE_FAULT = ("The GPU reported a fault during this job; its worker process is being restarted and the "
                "other workers keep serving. Please try again.")


def _device_fault(error: BaseException) -> bool:
    """A CUDA error that leaves this process's context broken (every later call would fail too)."""
    text = str(error)
    return type(error).__name__ == "AcceleratorError" or "CUDA error" in text or "cudaError" in text


def _snapshot(manager) -> dict:
    """What the front end's read-only Backend members answer, as of now."""
    return {"model": manager.model, "native_size": manager.native_size, "family_name": manager.family_name,
            "train_steps": manager.train_steps, "describe": manager.describe(), "memory": manager.memory_report(),
            "concurrency": manager.concurrency}


class _Busy:
    """A worker's own account of its jobs, for operators and bench/gpu_procs.py: how many ran,
    their summed seconds, the seconds at least one was running (busy), its process CPU time."""

    def __init__(self):
        self.lock = threading.Lock()
        self.jobs, self.job_s, self.busy_s = 0, 0.0, 0.0
        self.running, self.since = 0, 0.0

    @contextmanager
    def job(self):
        started = time.monotonic()
        with self.lock:
            if self.running == 0:
                self.since = started
            self.running += 1
        try:
            yield
        finally:
            ended = time.monotonic()
            with self.lock:
                self.running -= 1
                self.jobs += 1
                self.job_s += ended - started
                if self.running == 0:
                    self.busy_s += ended - self.since

    def report(self) -> dict:
        with self.lock:
            now = time.monotonic()
            busy = self.busy_s + (now - self.since if self.running else 0.0)
            return {"jobs": self.jobs, "running": self.running, "job_s": self.job_s, "busy_s": busy,
                    "cpu_s": time.process_time()}


def worker_main(slot: int, device: str | None, manager_kwargs: dict, commands, events) -> None:
    """A worker process's life: build the manager, then run commands until told to stop or
    until the front end's process is gone."""
    label = device or "default device"
    where = device
    if device and device.startswith("cuda:"):
        device = "cuda"  # the only GPU this process sees (CUDA_VISIBLE_DEVICES, set from its birth)
    send = lambda message: events.put(_pack(message))  # noqa: E731
    try:
        from pipelines.core import catalog
        from pipelines.core.warmup import warm_up
        from pipelines.manager import PipelineManager

        from . import placement

        manager = PipelineManager(device=device, **manager_kwargs)
        near = placement.local_cpus(where) if placement.enabled() else None
    except BaseException as error:  # noqa: BLE001 — told to the front end, which logs it
        send(("failed", None, _error_payload(error)))
        return
    name = f"{socket.gethostname()}:{os.getpid()}:{label}"
    jobs: dict[int, Job] = {}
    work: queue.Queue = queue.Queue()
    parent = multiprocessing.parent_process()
    busy = _Busy()

    def read_commands():
        """Interrupt, Skip, the token counter and the stats act at once; everything else waits its turn."""
        while True:
            try:
                message = commands.get(timeout=1.0)
            except queue.Empty:
                if parent is not None and not parent.is_alive():
                    os._exit(0)  # the front end is gone: nobody to serve
                continue
            kind, call_id, payload = message
            if kind == "cancel" and call_id in jobs:
                jobs[call_id].cancel()
            elif kind == "skip" and call_id in jobs:
                jobs[call_id].skip()
            elif kind == "count":
                try:
                    counted = manager.count_tokens(payload)
                except Exception:  # noqa: BLE001 — a counter never fails a job
                    counted = None
                send(("done", call_id, counted))
            elif kind == "stats":
                served = list(manager.batching.served)  # requests per batch, in order (1: alone)
                send(("done", call_id, {**busy.report(), **placement.placed(), "batches": served}))
            elif kind == "stop":
                work.put(None)
                return
            elif kind in ("job", "load", "warmup", "place"):
                if kind == "job":
                    jobs[call_id] = Job()
                work.put(message)

    threading.Thread(target=read_commands, name="commands", daemon=True).start()
    # A manager that batches (pipelines/batching.py) needs its jobs waiting side by side:
    # jobs run on threads of their own (one job: in this loop, as ever), as many as the manager
    # lets wait (its concurrency: twice the batch size, so a batch samples while the next one's
    # members already wait in its line; with max_batch threads 16 requests ran as
    # [1, 3, 2, 3, 2, 2, 2, 1] where the manager in one process served [1, 4, 4, 4, 3]).
    side_by_side_jobs = manager.concurrency
    job_slots = threading.BoundedSemaphore(side_by_side_jobs)
    send(("ready", None, {**_snapshot(manager), "local_cpus": near}))
    catalog_seen, info_sent, stale = None, time.monotonic(), False
    state_lock = threading.Lock()  # the bookkeeping above, shared by jobs running side by side

    def handle(message):
        """One command, in this loop or (a job, when the manager batches) on a thread of its own."""
        nonlocal catalog_seen, info_sent, stale
        kind, call_id, payload = message
        try:
            if kind == "job":
                request, catalog_generation, steps = payload
                with state_lock:
                    if catalog_generation != catalog_seen:  # the front end rescanned the model folders
                        catalog.refresh()
                        catalog_seen = catalog_generation
                # Steps (and the previews they carry: a device→host copy each) only for a caller
                # who reads them; Interrupt and Skip act through the Job either way.
                on_step = (lambda step: send(("step", call_id, step))) if steps else None
                with busy.job():
                    result = manager.run(request, on_step=on_step, job=jobs[call_id])
                if isinstance(result, GenerationResult):
                    result.worker = name
                reply = ("done", call_id, result)
            elif kind == "load":
                reply = ("done", call_id, manager.load_base(payload))
            elif kind == "place":
                reply = ("done", call_id, placement.apply(payload))
            else:  # warmup
                reply = ("done", call_id, warm_up(manager, payload))
        except BaseException as error:  # noqa: BLE001 — the job's error, raised in the front end
            if _device_fault(error):  # the CUDA context is unusable: tell the job, then make way for a new process
                log.error("device fault in %s:\n%s", label, traceback.format_exc())
                send(("error", call_id, ("GenerationError", DEVICE_FAULT, "")))
                events.close()
                events.join_thread()  # the message is out before the process ends
                os._exit(70)
            reply = ("error", call_id, _error_payload(error))
        finally:
            jobs.pop(call_id, None)
        send(reply)
        # The memory report walks every weight storage (milliseconds of this process's GIL, which
        # the next job's kernel launches want): at once after a load; after jobs only when the
        # worker goes idle, or at most every INFO_UNDER_LOAD_S under a steady load (a job adds
        # at most a mode or an extra module).
        with state_lock:
            stale = True
            if kind not in ("job", "place") or time.monotonic() - info_sent >= INFO_UNDER_LOAD_S:
                send(("info", None, _snapshot(manager)))
                info_sent, stale = time.monotonic(), False
    while True:
        try:
            message = work.get(timeout=INFO_IDLE_S)
        except queue.Empty:
            with state_lock:
                if stale and busy.running == 0:  # idle now: the report the last jobs skipped
                    send(("info", None, _snapshot(manager)))
                    info_sent, stale = time.monotonic(), False
            continue
        if message is None:
            break
        kind, call_id, payload = message
        if kind == "job" and manager.concurrency > 1:
            job_slots.acquire()

            def side_by_side(message=message):
                try:
                    handle(message)
                finally:
                    job_slots.release()

            threading.Thread(target=side_by_side, name=f"job {call_id}", daemon=True).start()
            continue
        handle(message)
    for _ in range(side_by_side_jobs if manager.concurrency > 1 else 0):
        job_slots.acquire()  # jobs sent before the stop finish first, as when they ran in this loop
    os._exit(0)  # skip interpreter teardown under live compile threads


# ----------------------------------------------------------------------------- the front end's side
_environ_lock = threading.Lock()


@contextmanager
def _only_gpu(device: str | None):
    """CUDA_VISIBLE_DEVICES for a process started inside this block (a spawned child copies the
    environment at birth): cuda:N → the N-th GPU this process sees. Set before the child runs any
    code, so no import in it can initialise CUDA with every GPU visible."""
    if not (device and device.startswith("cuda:")):
        yield
        return
    with _environ_lock:
        before = os.environ.get("CUDA_VISIBLE_DEVICES")
        index = device.split(":", 1)[1]
        visible = [v.strip() for v in before.split(",")] if before else []
        os.environ["CUDA_VISIBLE_DEVICES"] = visible[int(index)] if index.isdigit() and int(index) < len(visible) else index
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = before


class _Life:
    """One process of a worker slot, with the calls waiting for its answers."""

    def __init__(self, context, process_args: tuple, name: str):
        self.commands, self.events = context.Queue(), context.Queue()
        self.process = context.Process(target=worker_main, args=(*process_args, self.commands, self.events),
                                       name=name, daemon=False)  # not daemonic: inductor starts compile workers
        self.pending: dict[int, queue.Queue] = {}
        self.lost = False  # the process died; calls still waiting get a "lost" answer

    def register(self, call_id: int) -> queue.Queue:
        replies: queue.Queue = queue.Queue()
        self.pending[call_id] = replies
        return replies

    def answer(self, replies: queue.Queue, timeout: float | None):
        """The next answer for a call; ("lost", None) once the process is known dead."""
        deadline = None if timeout is None else time.monotonic() + timeout
        poll = max(POLL_S, timeout or 0.0)
        while True:
            try:
                left = poll if deadline is None else max(0.0, deadline - time.monotonic())
                return replies.get(timeout=min(poll, left))
            except queue.Empty:
                if self.lost and replies.empty():
                    return "lost", None
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError("no answer in time") from None


class _Worker:
    """The front end's view of one worker slot (a new process when the old one dies)."""

    def __init__(self, slot: int, device: str | None):
        self.slot, self.device = slot, device
        self.life: _Life | None = None
        self.serving = False  # started and holding the pool's model: jobs may come
        self.busy = 0
        self.info: dict | None = None
        self.ready = threading.Event()
        self.start_error = ""
        self.crashes = 0
        self.local_cpus: list[int] | None = None  # the CPUs near its device, as the worker reported them
        self.share = None  # its placement.Share of those CPUs (None: left to the OS)
        self.placed: dict | None = None  # what the worker applied: {"cpus": [...], "threads": n}

    @property
    def label(self) -> str:
        return f"worker {self.slot + 1} ({self.device})" if self.device else f"worker {self.slot + 1}"

    def send(self, kind: str, call_id: int | None, payload=None) -> None:
        self.life.commands.put((kind, call_id, payload))


class ProcessPool:
    """Implements pipelines.core.backend.Backend over one worker process per device."""

    def __init__(self, devices: list[str | None], manager_kwargs: dict, start_timeout: float = START_TIMEOUT_S,
                 restart: bool = True):
        if not devices:
            raise ValueError("a process pool needs at least one device")
        self._context = multiprocessing.get_context("spawn")  # never fork a process that holds CUDA
        self._kwargs = manager_kwargs
        self._workers = [_Worker(slot, device) for slot, device in enumerate(devices)]
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._restart = restart
        self._closed = False
        self._source: str | None = None  # the model every worker should hold
        self._warmup: list | None = None
        self.start_timeout = start_timeout
        for worker in self._workers:
            self._start(worker)
        for worker in self._workers:
            worker.ready.wait(start_timeout)
        started = [w for w in self._workers if w.info is not None]
        if not started:
            self.shutdown()
            reasons = "; ".join(w.start_error or "did not start in time" for w in self._workers)
            raise RuntimeError(f"no worker process started: {reasons}")
        self._place(started)
        with self._cond:
            for worker in started:
                worker.serving = True
        atexit.register(self.shutdown)

    # ------------------------------------------------------------------ processes
    def _start(self, worker: _Worker) -> None:
        worker.ready.clear()
        worker.info, worker.start_error = None, ""
        life = _Life(self._context, (worker.slot, worker.device, self._kwargs), f"sd-studio-{worker.label}")
        worker.life = life
        with _only_gpu(worker.device):
            life.process.start()
        threading.Thread(target=self._read_events, args=(worker, life), name=f"events of {worker.label}",
                         daemon=True).start()

    def _place(self, workers: list[_Worker]) -> None:
        """Several workers on one host: each pinned to its share of the CPUs near its device, with
        as many torch threads as cores in it (serving/placement.py). Skipped when they could not
        tell their CPUs, and with SD_STUDIO_PIN_CPUS=0."""
        from . import placement

        if len(workers) < 2 or not placement.enabled():
            return
        for worker, share in zip(workers, placement.plan([w.local_cpus for w in workers])):
            if share is None:
                continue
            try:
                worker.placed = self._call(worker, "place", share, timeout=60.0)
                worker.share = share
            except Exception as error:  # noqa: BLE001 — placement is an optimisation: serve unplaced
                log.warning("%s could not be placed on CPUs %s: %s", worker.label, list(share.cpus), error)

    def _read_events(self, worker: _Worker, life: _Life) -> None:
        """Route one worker process's messages to the calls waiting for them; notice its death."""
        while not self._closed:
            try:
                kind, call_id, payload = pickle.loads(life.events.get(timeout=0.5))
            except queue.Empty:
                if life.process.is_alive():
                    continue
                return self._lost(worker, life)
            except (EOFError, OSError):
                return self._lost(worker, life)
            if kind == "ready":
                worker.local_cpus = payload.pop("local_cpus", None)
            if kind in ("ready", "info"):
                worker.info = payload
                worker.ready.set()
            elif kind == "failed":
                worker.start_error = payload[1]
                log.error("%s could not start: %s\n%s", worker.label, payload[1], payload[2])
                worker.ready.set()
            elif call_id in life.pending:
                life.pending[call_id].put((kind, payload))

    def _lost(self, worker: _Worker, life: _Life) -> None:
        """A worker process died: its calls fail with a sentence; it is started again."""
        if self._closed:
            return
        with self._cond:
            worker.serving = False
            life.lost = True
        for replies in list(life.pending.values()):
            replies.put(("lost", None))  # after every answer it did send: waiting calls learn at once
        log.error("%s stopped unexpectedly (exit code %s); %d call(s) lost", worker.label, life.process.exitcode,
                  len(life.pending))
        worker.ready.set()
        if self._restart and not self._closed:
            threading.Thread(target=self._revive, args=(worker,), name=f"restart {worker.label}", daemon=True).start()

    def _revive(self, worker: _Worker) -> None:
        delay = min(60.0, 2.0 ** worker.crashes - 1)  # 0 s, then 1, 3, 7 … after repeated crashes
        worker.crashes += 1
        time.sleep(delay)
        if self._closed:
            return
        self._start(worker)
        worker.ready.wait(self.start_timeout)
        if worker.info is None:
            log.error("%s did not come back: %s", worker.label, worker.start_error or "no answer")
            return
        try:
            if worker.share is not None:  # the same device, the same CPUs as before
                worker.placed = self._call(worker, "place", worker.share)
            if self._source:
                self._call(worker, "load", self._source)
            if self._warmup:
                self._call(worker, "warmup", self._warmup)
        except Exception as error:  # noqa: BLE001 — it still serves; its model is what it could load
            log.error("%s restarted without its model: %s", worker.label, error)
        with self._cond:
            worker.serving = True
            self._cond.notify_all()
        log.info("%s restarted", worker.label)

    def shutdown(self) -> None:
        """Stop every worker (at exit too: they are not daemons)."""
        if self._closed:
            return
        self._closed = True
        for worker in self._workers:
            try:
                worker.send("stop", None)
            except Exception:  # noqa: BLE001
                pass
        for worker in self._workers:
            if worker.life is not None:
                worker.life.process.join(10)
                if worker.life.process.is_alive():
                    worker.life.process.kill()

    # ------------------------------------------------------------------ calls
    def _call(self, worker: _Worker, kind: str, payload, timeout: float | None = None):
        """Send one command and wait for its answer (raised as the worker's error)."""
        call_id, life = next(self._ids), worker.life
        replies = life.register(call_id)
        try:
            worker.send(kind, call_id, payload)
            answer, value = life.answer(replies, timeout)
        finally:
            life.pending.pop(call_id, None)
        if answer == "done":
            return value
        raise self._error(worker, answer, value)

    def _error(self, worker: _Worker, answer: str, value) -> Exception:
        if answer == "lost":
            return GenerationError(f"{worker.label.capitalize()} stopped unexpectedly during this job and is being "
                                   "restarted; the other workers keep serving. Please try again.")
        name, message, trace = value
        if name in USER_ERRORS:
            return USER_ERRORS[name](message)
        log.error("%s failed:\n%s", worker.label, trace)  # a bug: the traceback stays in the server log
        return RuntimeError(f"{worker.label} failed: {message}")

    @contextmanager
    def _least_busy(self):
        with self._cond:
            deadline = time.monotonic() + WAIT_FOR_WORKER_S
            while not any(w.serving for w in self._workers):
                if self._closed or not self._cond.wait(max(0.0, deadline - time.monotonic())):
                    raise GenerationError("No GPU worker is running at the moment (restarting after a failure). "
                                          "Please try again in a minute.")
            worker = min((w for w in self._workers if w.serving), key=lambda w: (w.busy, w.slot))
            worker.busy += 1
        try:
            yield worker
        finally:
            with self._cond:
                worker.busy -= 1

    def stream(self, request, job: Job | None = None):
        """StepInfo per step, then the result, from the least busy worker. The job's Interrupt and
        Skip are forwarded to that worker; a consumer that stops early interrupts the job."""
        return self._events(request, job, steps=True)

    def _events(self, request, job: Job | None, steps: bool):
        """stream(), or with steps=False only the result: the worker then computes no previews
        and sends no StepInfo (a device→host copy and a pickled image each)."""
        owned = job is None  # nobody else holds it: no Interrupt or Skip can come from outside
        job = job or Job()
        with self._least_busy() as worker:
            call_id, life = next(self._ids), worker.life
            replies = life.register(call_id)
            finished = cancel_sent = False
            try:
                worker.send("job", call_id, (request, _catalog_generation(), steps))
                while True:
                    if job.cancelled and not cancel_sent:
                        worker.send("cancel", call_id)
                        cancel_sent = True
                    if job.take_skip():
                        worker.send("skip", call_id)
                    try:
                        answer, value = life.answer(replies, LOST_CHECK_S if owned else POLL_S)
                    except TimeoutError:
                        continue
                    if answer == "step":
                        yield value
                        continue
                    finished = True
                    if answer != "done":
                        raise self._error(worker, answer, value)
                    worker.crashes = 0  # it serves again: the next crash restarts it at once
                    yield value
                    return
            finally:
                life.pending.pop(call_id, None)
                if not finished and not cancel_sent:
                    try:
                        worker.send("cancel", call_id)
                    except Exception:  # noqa: BLE001 — its process is gone anyway
                        pass

    def run(self, request, on_step=None, job: Job | None = None):
        """The result; StepInfo (with previews) cross the process boundary only for an on_step."""
        return result_of(self._events(request, job, steps=on_step is not None), on_step)

    def _broadcast(self, kind: str, payload) -> list:
        """The same command to every serving worker at once; their answers (or errors) in order."""
        with self._cond:
            workers = [w for w in self._workers if w.serving]
        if not workers:
            raise ModelLoadError("No GPU worker is running at the moment (restarting after a failure). "
                                 "Please try again in a minute.")
        outcomes: list = [None] * len(workers)

        def one(index, worker):
            try:
                outcomes[index] = self._call(worker, kind, payload)
            except Exception as error:  # noqa: BLE001 — collected, raised below
                outcomes[index] = error

        threads = [threading.Thread(target=one, args=(i, w)) for i, w in enumerate(workers)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        return outcomes

    def load_base(self, source: str):
        """Load on every worker, in parallel. Each keeps its previous model when its own load
        fails, and the first error is raised; workers started later load the newest model
        any worker could load."""
        outcomes = self._broadcast("load", source)
        loaded = [o for o in outcomes if not isinstance(o, Exception)]
        if loaded:
            self._source = source
        errors = [o for o in outcomes if isinstance(o, Exception)]
        if errors:
            raise errors[0]
        return loaded[0]

    def warm_up(self, sizes: list[tuple[int, int]]) -> None:
        """--warmup on every worker at once (and on a restarted one)."""
        self._warmup = sizes
        errors = [o for o in self._broadcast("warmup", sizes) if isinstance(o, Exception)]
        if errors:
            raise errors[0]

    def count_tokens(self, text: str):
        """Answered by a worker's command thread, even while it generates; None if that is slow."""
        with self._cond:
            workers = sorted((w for w in self._workers if w.serving), key=lambda w: w.busy)
        if not workers:
            return None
        try:
            return self._call(workers[0], "count", text, timeout=COUNT_TIMEOUT_S)
        except Exception:  # noqa: BLE001 — a timeout or a worker restarting: the counter stays blank
            return None

    # ------------------------------------------------------------------ what the UI reads
    def _info(self) -> dict:
        for worker in self._workers:
            if worker.serving and worker.info is not None:
                return worker.info
        for worker in self._workers:
            if worker.info is not None:
                return worker.info
        return {"model": None, "native_size": 512, "family_name": "SD", "train_steps": 1000,
                "describe": "No worker process is running.", "memory": {}}

    @property
    def concurrency(self) -> int:
        # a worker whose manager batches takes that many jobs at once (pipelines/batching.py)
        return sum((w.info or {}).get("concurrency", 1) for w in self._workers)

    @property
    def model(self):
        return self._info()["model"]

    @property
    def native_size(self) -> int:
        return self._info()["native_size"]

    @property
    def family_name(self) -> str:
        return self._info()["family_name"]

    @property
    def train_steps(self) -> int:
        return self._info()["train_steps"]

    def describe(self) -> str:
        devices = ", ".join(str(w.device or "default") for w in self._workers)
        down = [w.label for w in self._workers if not w.serving]
        return (f"{self._info()['describe']} {len(self._workers)} worker processes, one per device: {devices}."
                + (f" Restarting: {', '.join(down)}." if down else ""))

    def memory_report(self) -> dict:
        """The first serving worker's (every worker holds its own copy of the same weights)."""
        return self._info()["memory"]

    def worker_stats(self) -> list[dict | None]:
        """Each slot's own account (for operators and bench/gpu_procs.py; never shown to users):
        jobs run, their summed seconds, seconds busy with at least one job, the process's CPU
        seconds, its CPUs and torch threads; None for a slot that does not answer now."""
        with self._cond:
            workers = list(self._workers)
        stats: list[dict | None] = []
        for worker in workers:
            try:
                stats.append(self._call(worker, "stats", None, timeout=5.0) if worker.serving else None)
            except Exception:  # noqa: BLE001 — restarting, or too busy to answer
                stats.append(None)
        return stats

    def worker_pids(self) -> list[int | None]:
        """Each slot's process id (for operators and tests; never shown to users)."""
        return [w.life.process.pid if w.life is not None and w.serving else None for w in self._workers]


def _catalog_generation() -> int:
    """Which scan of the model folders the front end has (workers rescan when it moves)."""
    from pipelines.core import catalog

    return catalog.current().generation
