"""Several GPUs in one host, one run: throughput of 16 concurrent txt2img requests through
(a) one GPU (one worker process), (b) `--devices all` (serving/procs.py: one worker process
per GPU, CUDA graphs on), (c) the Ray Serve backend with one replica per GPU
(serving/ray_serve.py), and for reference (d) the ordinary one-GPU app (the manager in this
process, no worker process); ratios vs (a). Also (b) again with SD_STUDIO_PIN_CPUS=0 (no CPU
placement, serving/placement.py), and for (a), (b) and (d) a second round through stream()
(steps with previews cross back, as for a UI) beside the run() round (no steps wanted).
Per worker process: images/s, busy and computing fractions of the wall, CPU cores used, its
CPUs and torch threads; the front end's CPU cores. SD 1.5 shapes with random weights, fp16, 512², 30
steps, Euler, CFG 7.5; fast path with CUDA graphs, compile "none" by default (compiling
would not fit the time budget of one call).
Before its measured round each backend runs its own --warmup for the bench size (`warmup_s`:
every batch shape up to max_batch, pipelines/core/warmup.py; Ray replicas warm in their
constructor, so for Ray it is inside start_and_load_s too), then three warm rounds as before.

    PYTHONUNBUFFERED=1 python bench/gpu_procs.py [--requests 16] [--compile none] [--skip-ray]
    python bench/gpu_procs.py --cpu-smoke      # the same code on 2 CPU workers, tiny model

Prints one JSON line per measurement as it goes (a failing part is logged, the next runs)
and a summary line at the end; a watchdog ends the run at --budget-s with what it has.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from unittest import mock
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
for quiet in ("HF_HUB_DISABLE_PROGRESS_BARS", "DIFFUSERS_NO_PROGRESS_BARS"):  # workers load quietly too
    os.environ.setdefault(quiet, "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import json  # noqa: E402

from gpu_speed import PROMPT, ROWS, budget_watchdog, log, section  # noqa: E402
from pipelines.core.requests import Limits, Sampling, Txt2ImgRequest  # noqa: E402

RESULTS: dict[str, float] = {}


def run_concurrently(backend, requests, streamed: bool = False) -> dict:
    """All requests at once from their own threads (as many users would). streamed: through
    stream() (a UI's way: every StepInfo with its previews crosses back), else run() without a
    progress callback (no steps, no previews). Wall seconds, jobs per worker, each request's
    latency, and per worker the seconds its manager was computing (the union of each result's
    own seconds, ending when it arrived: a batch counts once)."""
    workers, latencies, spans, lock = Counter(), [], {}, threading.Lock()

    def one(request):
        started = time.perf_counter()
        try:
            if streamed:
                result = list(backend.stream(request))[-1]
            else:
                result = backend.run(request)
            worker = result.worker.split(":", 1)[-1] or "?"  # pid:device
            span = (time.perf_counter() - result.seconds, time.perf_counter())
        except Exception as error:  # noqa: BLE001 — counted, so a failure shows in the figures
            worker, span = f"failed: {type(error).__name__}: {str(error)[:200]}", None
        with lock:
            workers[worker] += 1
            latencies.append(time.perf_counter() - started)
            if span:
                spans.setdefault(worker, []).append(span)

    threads = [threading.Thread(target=one, args=(r,)) for r in requests]
    cpu, started = time.process_time(), time.perf_counter()
    [t.start() for t in threads]
    [t.join() for t in threads]
    wall = time.perf_counter() - started
    return {"wall": wall, "workers": workers, "latencies": sorted(latencies), "front_cpu_s": time.process_time() - cpu,
            "computing_s": {w: union_s(s) for w, s in spans.items()}}


def union_s(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def worker_stats(backend) -> list | None:
    return backend.worker_stats() if hasattr(backend, "worker_stats") else None


def per_worker(before, after, run) -> list | None:
    """Each worker process's own account over the measured run: images per second, the fraction
    of the wall it had a job inside its manager (busy) and was computing (its manager's own
    seconds, batches once), the CPU cores its process used, its CPUs and torch threads."""
    if not before or not after:
        return None
    rows, wall = [], run["wall"]
    for b, a in zip(before, after):
        if not b or not a:
            rows.append(None)
            continue
        jobs = a["jobs"] - b["jobs"]
        rows.append({"images_per_s": round(jobs / wall, 2), "jobs": jobs, "batches": a["batches"][len(b["batches"]):],
                     "busy_fraction": round((a["busy_s"] - b["busy_s"]) / wall, 3),
                     "job_s_sum_vs_wall": round((a["job_s"] - b["job_s"]) / wall, 2),
                     "cpu_cores_used": round((a["cpu_s"] - b["cpu_s"]) / wall, 2),
                     "cpus": cpu_ranges(a.get("cpus")), "torch_threads": a.get("threads")})
    return rows


def cpu_ranges(cpus) -> str | None:
    """[0, 1, 2, 5] → '0-2,5' (the kernel's list format, short in a log line)."""
    if not cpus:
        return None
    runs: list[list[int]] = []
    for cpu in sorted(cpus):
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)


def warm_up_backend(backend, size: tuple[int, int]) -> float | None:
    """The backend's own --warmup for the bench size (every batch shape up to max_batch,
    pipelines/core/warmup.py): seconds, or None where it has none. A worker pool warms every
    worker at once; the in-process manager here; Ray replicas warmed in their constructor
    (RayBackend(warmup=…)), so their figure is one replica's own."""
    if hasattr(backend, "warm_up"):  # ProcessPool
        started = time.perf_counter()
        backend.warm_up([size])
        return round(time.perf_counter() - started, 1)
    if hasattr(backend, "batching"):  # the manager in this process
        from pipelines.core.warmup import warm_up

        return round(warm_up(backend, [size]), 1)
    seconds = getattr(backend, "warmup_s", None)
    return None if seconds is None else round(seconds, 1)


def measure(name, backend, requests, slots, started, streamed_row: bool = False):
    ready = time.perf_counter() - started
    warmup_s = warm_up_backend(backend, (requests[0].width, requests[0].height))
    # Then, as before --warmup covered batch shapes: eager, then graphs; then one whole round,
    # so every batch shape the measured round forms (up to max_batch per worker) has been seen
    # twice and captured before the clock runs, whatever the warm-up left out.
    warm = [round(run_concurrently(backend, batch)["wall"], 2)
            for batch in (requests[: 2 * slots], requests[: 2 * slots], requests)]
    before, served = worker_stats(backend), len(getattr(getattr(backend, "batching", None), "served", []))
    run = run_concurrently(backend, requests)
    after = worker_stats(backend)
    batches = backend.batching.served[served:] if hasattr(backend, "batching") else None  # the in-process manager
    wall, latencies = run["wall"], run["latencies"]
    RESULTS[name] = wall
    base = RESULTS.get("one GPU")
    log(backend=name, workers=slots, requests=len(requests), start_and_load_s=round(ready, 1), warmup_s=warmup_s,
        warm_rounds_s=warm,
        wall_s=round(wall, 2), images_per_s=round(len(requests) / wall, 2),
        throughput_vs_one_gpu=round(base / wall, 2) if base else None,
        latency_median_s=round(latencies[len(latencies) // 2], 2), latency_max_s=round(latencies[-1], 2),
        jobs_per_worker=dict(run["workers"]),
        computing_fraction={w: round(s / wall, 3) for w, s in run["computing_s"].items()},
        front_end_cpu_cores=round(run["front_cpu_s"] / wall, 2), per_worker=per_worker(before, after, run),
        **({"batches": batches} if batches is not None else {}))
    if streamed_row:  # the same backend, the UI's way: steps with previews cross back
        streamed = run_concurrently(backend, requests, streamed=True)
        key = f"{name}, streamed (steps + previews)"
        RESULTS[key] = streamed["wall"]
        log(backend=key, requests=len(requests), wall_s=round(streamed["wall"], 2),
            images_per_s=round(len(requests) / streamed["wall"], 2),
            throughput_vs_one_gpu=round(base / streamed["wall"], 2) if base else None,
            vs_run_without_steps=round(wall / streamed["wall"], 3),
            front_end_cpu_cores=round(streamed["front_cpu_s"] / streamed["wall"], 2))


def bench_pool(name, source, devices, kwargs, requests, streamed_row=True):
    """One worker process per device in `devices` (serving/procs.py), measured as `name`."""
    from serving.procs import ProcessPool

    started = time.perf_counter()
    pool = ProcessPool(devices, kwargs)
    try:
        pool.load_base(source)
        measure(name, pool, requests, len(devices), started, streamed_row=streamed_row)
    finally:
        pool.shutdown()


@section("one GPU")
def bench_one(args, source, devices, kwargs, requests):
    bench_pool("one GPU", source, devices[:1], kwargs, requests)


@section("--devices all")
def bench_processes(args, source, devices, kwargs, requests):
    bench_pool("--devices all (process per GPU)", source, devices, kwargs, requests)


@section("--devices all, placement off")
def bench_processes_unplaced(args, source, devices, kwargs, requests):
    """The same without CPU placement (SD_STUDIO_PIN_CPUS=0, which the workers inherit): each
    worker on every CPU of the host with torch's default thread count, as before serving/placement.py."""
    from serving import placement

    with mock.patch.dict(os.environ, {placement.ENV: "0"}):
        bench_pool("--devices all, placement off", source, devices, kwargs, requests, streamed_row=False)


@section("ray")
def bench_ray(args, source, devices, kwargs, requests):
    from serving.ray_serve import RayBackend

    started = time.perf_counter()
    backend = RayBackend(source, kwargs, replicas=len(devices), gpus_per_replica=0.0 if args.cpu_smoke else 1.0,
                         warmup=[(args.size, args.size)])  # each replica warms before it serves
    try:
        measure("Ray Serve (replica per GPU)", backend, requests, len(devices), started)
    finally:
        backend.shutdown()


@section("in-process manager")
def bench_in_process(args, source, devices, kwargs, requests):
    """Reference: the ordinary single-device app (the manager in this process, no worker)."""
    from pipelines.manager import PipelineManager

    started = time.perf_counter()
    manager = PipelineManager(device=devices[0], **kwargs)
    manager.load_base(source)
    measure("in-process manager, one GPU (reference)", manager, requests, 1, started, streamed_row=True)


def save_rows() -> None:
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_procs.json").write_text(json.dumps(ROWS, indent=1))


def stop_report() -> None:
    log(results=RESULTS)
    save_rows()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--compile", default="none", choices=("none", "regional", "full"))
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--budget-s", type=float, default=360, help="end the run after this long, with what it has")
    parser.add_argument("--cpu-smoke", action="store_true", help="2 CPU workers, the tiny test model, 64², 4 steps")
    args = parser.parse_args()
    budget_watchdog(args.budget_s, on_stop=stop_report)
    folder = Path(tempfile.mkdtemp())
    if args.cpu_smoke:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_sd import save_tiny_model

        source = str(save_tiny_model(folder / "tiny-sd"))
        devices, kwargs = ["cpu", "cpu"], {"fast_path": None, "max_batch": 4}  # batching on, as on a GPU
        args.size, args.steps, args.requests = 64, 4, min(args.requests, 8)
        card = "cpu"
    else:
        import torch

        from gpu_speed import build_random_sd15
        from pipelines.fast_path import FastPath

        source = str(build_random_sd15(folder) / "sd15")
        devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        kwargs = {"dtype": "fp16", "fast_path": FastPath(compile=args.compile)}
        card = f"{len(devices)} x {torch.cuda.get_device_name()}"
        torch.cuda.empty_cache()
    log(stage="built the model", card=card, devices=devices, compile=args.compile)
    requests = [Limits().normalize(Txt2ImgRequest(prompt=PROMPT, width=args.size, height=args.size,
                                                  sampling=Sampling(scheduler="Euler", steps=args.steps, cfg_scale=7.5, seed=i)))
                for i in range(args.requests)]
    bench_one(args, source, devices, kwargs, requests)
    bench_processes(args, source, devices, kwargs, requests)
    bench_processes_unplaced(args, source, devices, kwargs, requests)
    if not args.skip_ray:
        bench_ray(args, source, devices, kwargs, requests)
    bench_in_process(args, source, devices, kwargs, requests)
    base = RESULTS.get("one GPU")
    log(summary={name: {"wall_s": round(s, 2), "throughput_vs_one_gpu": round(base / s, 2) if base else None}
                 for name, s in RESULTS.items()}, card=card, requests=args.requests, size=args.size, steps=args.steps)
    save_rows()
    sys.stdout.flush()
    os._exit(0)  # Ray's and the workers' threads need no orderly interpreter teardown


if __name__ == "__main__":
    main()
