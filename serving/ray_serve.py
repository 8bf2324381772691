"""Scale-out on Ray Serve: generation workers are Serve replicas (one per GPU, autoscaling
bounds), each owning a PipelineManager; the Gradio front end sends them the same request
objects and streams StepInfo events and the result back.

    python app.py --backend ray                      # starts a local Ray cluster
    python app.py --backend ray --ray-address auto   # joins a running cluster

Interrupt and Skip cross processes through one small actor holding the cancelled (and skipped)
job ids; a worker's Job polls it (at most every POLL_S) between steps.
"""
from __future__ import annotations

import os
import socket
import time
import uuid
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

    def forget(self, job_id: str) -> None:
        self.ids.discard(job_id)
        self.skips.pop(job_id, None)


class RemoteJob(Job):
    """A worker-side Job whose cancel flag lives in the CancelledJobs actor."""

    def __init__(self, job_id: str, flags):
        super().__init__()
        self.job_id, self.flags, self._checked, self._skips_seen = job_id, flags, 0.0, 0

    def _poll(self) -> None:
        if self._cancel.is_set() or time.monotonic() - self._checked < POLL_S:
            return
        self._checked = time.monotonic()
        cancelled, skips = ray.get(self.flags.state.remote(self.job_id))
        if cancelled:
            self._cancel.set()
        if skips > self._skips_seen:  # a new Skip press: the batch loop takes it once
            self._skips_seen = skips
            self._skip.set()

    @property
    def cancelled(self) -> bool:
        self._poll()
        return self._cancel.is_set()

    @property
    def skipping(self) -> bool:
        self._poll()
        return self._skip.is_set()


@serve.deployment(name="GenerationWorker", max_ongoing_requests=1)  # one job per GPU at a time
class GenerationWorker:
    def __init__(self, model: str, manager_kwargs: dict):
        from pipelines.manager import PipelineManager

        self.manager = PipelineManager(**manager_kwargs)
        if model:
            self.manager.load_base(model)
        self.flags = ray.get_actor(FLAGS_ACTOR)
        self.name = f"{socket.gethostname()}:{os.getpid()}:{self.manager.device}"

    def stream(self, request, job_id: str):
        for event in self.manager.stream(request, RemoteJob(job_id, self.flags)):
            if isinstance(event, GenerationResult):
                event.worker = self.name
            yield event

    def info(self) -> dict:
        return {"describe": self.manager.describe(), "native_size": self.manager.native_size,
                "family_name": self.manager.family_name,
                "train_steps": self.manager.train_steps,
                "memory": self.manager.memory_report(), "model": self.manager.model, "worker": self.name}

    def load_base(self, source: str):
        return self.manager.load_base(source)

    def count_tokens(self, text: str):
        return self.manager.count_tokens(text)


class RayBackend:
    """The front end's side of Ray Serve: implements pipelines.core.backend.Backend; every request
    (generation or Diffusion lab) runs on a replica."""

    def __init__(self, model: str, manager_kwargs: dict, address: str | None = None, replicas: int = 1,
                 max_replicas: int | None = None, gpus_per_replica: float = 0.0, cpus_per_replica: float = 1.0):
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
        scaling = ({"min_replicas": replicas, "max_replicas": max_replicas, "target_ongoing_requests": 1}
                   if max_replicas and max_replicas > replicas else None)
        options = {"ray_actor_options": {"num_gpus": gpus_per_replica, "num_cpus": cpus_per_replica}}
        options.update({"autoscaling_config": scaling} if scaling else {"num_replicas": replicas})
        app = GenerationWorker.options(**options).bind(model, manager_kwargs)
        self.handle = serve.run(app, name=APP_NAME, route_prefix=None)
        self._info = self.handle.info.remote().result()
        self._concurrency = max_replicas or replicas

    @property
    def concurrency(self) -> int:
        return self._concurrency

    def stream(self, request, job: Job | None = None):
        job = job or Job()
        job_id = uuid.uuid4().hex
        told = False
        try:
            for event in self.handle.options(stream=True).stream.remote(request, job_id):
                if job.cancelled and not told:
                    self.flags.cancel.remote(job_id)
                    told = True
                if job.take_skip():
                    self.flags.skip.remote(job_id)
                yield event
        finally:
            if job.cancelled and not told:
                self.flags.cancel.remote(job_id)
            self.flags.forget.remote(job_id)

    def run(self, request, on_step=None, job: Job | None = None):
        return result_of(self.stream(request, job), on_step)

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
