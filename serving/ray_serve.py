"""Scale-out on Ray Serve: generation workers are Serve replicas (one per GPU, autoscaling
bounds), each owning a PipelineManager; the Gradio front end sends them the same request
objects and streams StepInfo events and the result back.

    python app.py --backend ray                      # starts a local Ray cluster
    python app.py --backend ray --ray-address auto   # joins a running cluster

Interrupt and Skip cross processes through one small actor holding the cancelled (and skipped)
job ids; one thread per replica polls it every POLL_S for the jobs running there, so the
denoising loop only reads local flags (no actor round trip between steps).

A replica takes twice as many requests at once as its manager batches (pipelines/batching.py:
4 on CUDA), so requests that arrive together are served as full batches, as with `--devices`.

With --warmup every replica warms those sizes (and batch shapes, pipelines/core/warmup.py) in
its constructor, before Serve routes requests to it: a replica added by autoscaling too.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray must not phone home either

import ray  # noqa: E402
from ray import serve  # noqa: E402

from pipelines.core.errors import ModelLoadError  # noqa: E402
from pipelines.core.jobs import GenerationResult, Job, result_of  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FLAGS_ACTOR = "sd-studio-cancelled-jobs"
APP_NAME = "sd-studio"
POLL_S = 0.1
COUNT_TIMEOUT_S = 0.5
log = logging.getLogger(__name__)


@ray.remote(num_cpus=0)
class CancelledJobs:
    def __init__(self):
        self.ids: set[str] = set()
        self.skips: dict[str, int] = {}  # job id → Skip presses so far

    def cancel(self, job_id: str) -> None:
        self.ids.add(job_id)

    def skip(self, job_id: str) -> None:
        self.skips[job_id] = self.skips.get(job_id, 0) + 1

    def is_cancelled(self, job_id: str) -> bool:
        return job_id in self.ids

    def state(self, job_id: str) -> tuple[bool, int]:
        return job_id in self.ids, self.skips.get(job_id, 0)

    def states(self, job_ids: list[str]) -> dict[str, tuple[bool, int]]:
        return {job_id: self.state(job_id) for job_id in job_ids}

    def forget(self, job_id: str) -> None:
        self.ids.discard(job_id)
        self.skips.pop(job_id, None)


class RemoteJob(Job):
    """A worker-side Job whose Interrupt and Skip come from the CancelledJobs actor, set by the
    replica's poller (FlagPoller) between the steps that read them."""

    def __init__(self, job_id: str):
        super().__init__()
        self.job_id, self._skips_seen = job_id, 0

    def update(self, cancelled: bool, skips: int) -> None:
        if cancelled:
            self._cancel.set()
        if skips > self._skips_seen:  # a new Skip press: the batch loop takes it once
            self._skips_seen = skips
            self._skip.set()


class FlagPoller:
    """One thread per replica asks the flags actor, every POLL_S, about the jobs running here."""

    def __init__(self, flags):
        self.flags, self.jobs, self.lock = flags, {}, threading.Lock()
        threading.Thread(target=self._loop, name="job flags", daemon=True).start()

    @contextmanager
    def track(self, job: RemoteJob):
        with self.lock:
            self.jobs[job.job_id] = job
        try:
            yield job
        finally:
            with self.lock:
                self.jobs.pop(job.job_id, None)

    def _loop(self) -> None:
        while True:
            time.sleep(POLL_S)
            with self.lock:
                jobs = dict(self.jobs)
            if not jobs:
                continue
            try:
                states = ray.get(self.flags.states.remote(list(jobs)), timeout=10)
            except Exception:  # noqa: BLE001 — the actor restarting: ask again next time
                continue
            for job_id, (cancelled, skips) in states.items():
                jobs[job_id].update(cancelled, skips)


@serve.deployment(name="GenerationWorker", max_ongoing_requests=1)  # RayBackend sets the manager's batch size
class GenerationWorker:
    def __init__(self, model: str, manager_kwargs: dict, warmup: list | None = None):
        from pipelines.manager import PipelineManager

        from serving.placement import pin_near_gpu

        self.manager = PipelineManager(**manager_kwargs)
        if self.manager.device.type == "cuda":
            pin_near_gpu()  # its host work on the socket its GPU hangs off (serving/placement.py)
        if model:
            self.manager.load_base(model)
        self.warmup_s = self._warm_up(warmup) if model and warmup else None
        self.flags = FlagPoller(ray.get_actor(FLAGS_ACTOR))
        self.name = f"{socket.gethostname()}:{os.getpid()}:{self.manager.device}"

    def _warm_up(self, sizes: list) -> float | None:
        """--warmup here (sizes as (width, height)); a failure is logged and the replica serves
        anyway (what it did not warm compiles when first served)."""
        from pipelines.core.warmup import warm_up

        try:
            return warm_up(self.manager, [(int(w), int(h)) for w, h in sizes])
        except Exception:  # noqa: BLE001 — serving unwarmed beats a replica that never starts
            log.exception("warm-up failed on this replica; serving without it")
            return None

    def stream(self, request, job_id: str, steps: bool = True):
        """StepInfo per step (with previews), then the result; with steps=False only the result:
        no previews computed (a device→host copy each), nothing per step sent back."""
        with self.flags.track(RemoteJob(job_id)) as job:
            events = self.manager.stream(request, job) if steps else [self.manager.run(request, None, job)]
            for event in events:
                if isinstance(event, GenerationResult):
                    event.worker = self.name
                yield event

    def info(self) -> dict:
        return {"describe": self.manager.describe(), "native_size": self.manager.native_size,
                "family_name": self.manager.family_name,
                "train_steps": self.manager.train_steps,
                "memory": self.manager.memory_report(), "model": self.manager.model, "worker": self.name,
                "warmup_s": self.warmup_s}

    def load_base(self, source: str):
        return self.manager.load_base(source)

    def count_tokens(self, text: str):
        return self.manager.count_tokens(text)


def _cuda_max_batch() -> int:
    from pipelines.batching import CUDA_MAX_BATCH

    return CUDA_MAX_BATCH


class RayBackend:
    """The front end's side of Ray Serve: implements pipelines.core.backend.Backend; every request
    (generation or Diffusion lab) runs on a replica."""

    def __init__(self, model: str, manager_kwargs: dict, address: str | None = None, replicas: int = 1,
                 max_replicas: int | None = None, gpus_per_replica: float = 0.0, cpus_per_replica: float = 1.0,
                 warmup: list[tuple[int, int]] | None = None):
        # This folder first, then whatever PYTHONPATH already held (where Ray itself may live).
        python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        runtime_env = {"env_vars": {"PYTHONPATH": python_path, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", ""),
                                    "RAY_USAGE_STATS_ENABLED": "0"}}
        if address:
            # A remote cluster has no copy of this folder: ship the code (not the weights' cache).
            runtime_env["working_dir"] = str(ROOT)
            runtime_env["excludes"] = [".git", "outputs", "tests/artifacts", "**/__pycache__"]
        ray.init(address=address or None, ignore_reinit_error=True, include_dashboard=False,
                 runtime_env=runtime_env, log_to_driver=False)
        self.flags = CancelledJobs.options(name=FLAGS_ACTOR, get_if_exists=True).remote()
        serve.start(proxy_location="Disabled")  # the Gradio app is the only front door
        # As many requests at once as a replica's manager batches (its max_batch; auto: 4 on CUDA).
        per_replica = manager_kwargs.get("max_batch") or (_cuda_max_batch() if gpus_per_replica > 0 else 1)
        scaling = ({"min_replicas": replicas, "max_replicas": max_replicas, "target_ongoing_requests": per_replica}
                   if max_replicas and max_replicas > replicas else None)
        # Twice that in flight: a batch samples while the next one's members wait in the manager's
        # line (with only max_batch, a finished batch's slots refilled one request at a time and the
        # next batches formed from whoever had arrived: 1, 3, 2, … instead of 4, 4, …).
        options = {"ray_actor_options": {"num_gpus": gpus_per_replica, "num_cpus": cpus_per_replica},
                   "max_ongoing_requests": per_replica if per_replica == 1 else 2 * per_replica}
        options.update({"autoscaling_config": scaling} if scaling else {"num_replicas": replicas})
        # warmup: sizes every replica warms before it serves (--warmup; serve.run waits for them).
        app = GenerationWorker.options(**options).bind(model, manager_kwargs, [tuple(s) for s in warmup or ()])
        self.handle = serve.run(app, name=APP_NAME, route_prefix=None)
        self._info = self.handle.info.remote().result()
        self._concurrency = (max_replicas or replicas) * options["max_ongoing_requests"]  # what the replicas take in

    @property
    def concurrency(self) -> int:
        return self._concurrency

    @property
    def warmup_s(self) -> float | None:
        """Seconds one replica's --warmup took (None: no warm-up); benches report it."""
        return self._info.get("warmup_s")

    def stream(self, request, job: Job | None = None):
        return self._events(request, job, steps=True)

    def _events(self, request, job: Job | None, steps: bool):
        job = job or Job()
        job_id = uuid.uuid4().hex
        told, done = [False], threading.Event()

        def forward() -> None:
            """Interrupt and Skip reach the replica through the flags actor, as they happen."""
            if job.cancelled and not told[0]:
                self.flags.cancel.remote(job_id)
                told[0] = True
            if job.take_skip():
                self.flags.skip.remote(job_id)

        def watch() -> None:  # without steps no event comes to look at the buttons between
            while not done.wait(POLL_S):
                forward()

        if not steps:
            threading.Thread(target=watch, name="ray job flags", daemon=True).start()
        try:
            for event in self.handle.options(stream=True).stream.remote(request, job_id, steps):
                forward()
                yield event
        finally:
            done.set()
            if job.cancelled and not told[0]:
                self.flags.cancel.remote(job_id)
            self.flags.forget.remote(job_id)

    def run(self, request, on_step=None, job: Job | None = None):
        """The result; steps (with previews) come back from the replica only for an on_step."""
        return result_of(self._events(request, job, steps=on_step is not None), on_step)

    def count_tokens(self, text: str):
        """The live token counter, asked of a replica. A replica runs one request at a time, so
        while all are busy generating the counter stays blank (None) instead of waiting."""
        try:
            return self.handle.count_tokens.remote(text).result(timeout_s=COUNT_TIMEOUT_S)
        except Exception:  # a timeout (replicas busy) or a replica restarting
            return None

    def load_base(self, source: str):
        raise ModelLoadError("With the Ray backend every replica loads the model given at start (--model); "
                             "restart the app with another --model to change it.")

    @property
    def model(self):
        return self._info["model"]

    @property
    def native_size(self) -> int:
        return self._info["native_size"]

    @property
    def train_steps(self) -> int:
        return self._info["train_steps"]

    @property
    def family_name(self) -> str:
        return self._info.get("family_name", "SD")

    def describe(self) -> str:
        return f"{self._info['describe']} Served by Ray Serve replicas."

    def memory_report(self) -> dict:
        return self._info["memory"]

    def shutdown(self) -> None:
        serve.shutdown()
        ray.shutdown()
