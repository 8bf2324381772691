"""Fairness between browser (Gradio) and REST API users sharing one backend line.

Phase 1: a browser client alone, then an API client alone, run R jobs each → their latencies
(the browser's includes Gradio's own per-job and per-step overhead, outside the line).
Phase 2: K API clients each keep one txt2img in flight, non-stop, while the browser client
runs R jobs again. With one first-come-first-served line (serving/fair.py) a job waits for
the jobs already in line: the browser's extra wait ≈ K backend jobs (one per API client),
an API client's ≈ K as well (K − 1 other API clients + the browser). Reported in units of
the backend's own time per job (info.sd_studio.seconds), so the numbers are machine-free.

    python bench/api_fairness.py                 # K = 3 API clients, R = 6 browser jobs, tiny model
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import httpx  # noqa: E402
from gradio_client import Client  # noqa: E402

from conftest import AppServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--api-clients", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    from tiny_sd import save_tiny_model

    work = Path(tempfile.mkdtemp())
    model = save_tiny_model(work / "tiny-sd")
    server = AppServer(["--model", str(model), "--no-save-outputs", "--api"], log_path=work / "app.log").wait_ready()
    browser_args = ["a red circle", "", "Euler", args.steps, True, 7, 0, 1, 1, 1, args.size, args.size]
    body = {"prompt": "a blue square", "steps": args.steps, "width": args.size, "height": args.size,
            "sampler_name": "Euler", "seed": 1}
    try:
        browser = Client(server.url, verbose=False)
        browser.predict(*browser_args, api_name="/txt2img")  # warm-up

        def browser_jobs() -> list[float]:
            times = []
            for _ in range(args.jobs):
                started = time.perf_counter()
                browser.predict(*browser_args, api_name="/txt2img")
                times.append(time.perf_counter() - started)
            return times

        alone = browser_jobs()
        stop = threading.Event()
        api_times: list[float] = []
        backend_seconds: list[float] = []

        def api_job(http) -> float:
            started = time.perf_counter()
            response = http.post("/sdapi/v1/txt2img", json=body)
            response.raise_for_status()
            backend_seconds.append(json.loads(response.json()["info"])["sd_studio"]["seconds"])
            return time.perf_counter() - started

        with httpx.Client(base_url=server.url.rstrip("/"), timeout=600) as http:
            api_alone = [api_job(http) for _ in range(args.jobs)]

        def api_client():
            with httpx.Client(base_url=server.url.rstrip("/"), timeout=600) as http:
                while not stop.is_set():
                    api_times.append(api_job(http))

        threads = [threading.Thread(target=api_client) for _ in range(args.api_clients)]
        for thread in threads:
            thread.start()
        time.sleep(2)  # the API clients are in line
        phase_start = time.perf_counter()
        api_before = len(api_times)
        shared = browser_jobs()
        phase = time.perf_counter() - phase_start
        api_done = len(api_times) - api_before
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        server.stop()
    job = statistics.median(backend_seconds)
    browser_wait = (statistics.median(shared) - statistics.median(alone)) / job
    api_wait = (statistics.median(api_times) - statistics.median(api_alone)) / job
    browser_rate = args.jobs / phase
    api_rate = api_done / phase / args.api_clients
    print(f"backend time per job {job:.3f} s; alone: browser {statistics.median(alone):.3f} s, "
          f"API {statistics.median(api_alone):.3f} s per job")
    print(f"with {args.api_clients} API clients in line: extra wait of a browser job {browser_wait:.2f} backend jobs, "
          f"of an API job {api_wait:.2f} (FIFO expectation: {args.api_clients} each)")
    print(f"jobs per second per client: browser {browser_rate:.2f}, API {api_rate:.2f}")

if __name__ == "__main__":
    main()
