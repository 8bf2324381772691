"""The process boundary's host cost, on the CPU: requests per second of the tiny model (64²,
4 steps) through one worker process (serving/procs.py) vs the manager in this process, where
host overhead (pickling, previews, relaying, polling) is a large share of each request.

    OMP_NUM_THREADS=1 python bench/cpu_procs.py [--requests 24] [--concurrent 4]

Rows: run() without a progress callback (the bench's and a script's way: no steps wanted),
stream() (a UI's way: StepInfo with previews every step on a CPU), each serially and with
--concurrent threads at once; ratios vs the in-process manager in the same run. One JSON
line per measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipelines.core.requests import Limits, Sampling, Txt2ImgRequest  # noqa: E402


def requests_per_s(backend, requests, concurrent: int, streamed: bool) -> float:
    def one(request):
        if streamed:
            for _ in backend.stream(request):
                pass
        else:
            backend.run(request)

    chunks = [requests[i::concurrent] for i in range(concurrent)]
    started = time.perf_counter()
    threads = [threading.Thread(target=lambda c=c: [one(r) for r in c]) for c in chunks]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return len(requests) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--concurrent", type=int, default=4)
    args = parser.parse_args()
    from pipelines.manager import PipelineManager
    from serving.procs import ProcessPool
    from tiny_sd import save_tiny_model

    source = str(save_tiny_model(Path(tempfile.mkdtemp()) / "tiny-sd"))
    requests = [Limits().normalize(Txt2ImgRequest(prompt="a red circle", width=64, height=64,
                                                  sampling=Sampling(steps=4, seed=i))) for i in range(args.requests)]
    manager = PipelineManager(device="cpu")
    manager.load_base(source)
    pool = ProcessPool(["cpu"], {})
    pool.load_base(source)
    try:
        for backend in (manager, pool):  # warm both (first-call allocations, lazy imports)
            requests_per_s(backend, requests[:4], 1, False)
        for streamed in (False, True):
            for concurrent in (1, args.concurrent):
                local = requests_per_s(manager, requests, concurrent, streamed)
                remote = requests_per_s(pool, requests, concurrent, streamed)
                print(json.dumps({"call": "stream" if streamed else "run", "concurrent": concurrent,
                                  "in_process_rps": round(local, 2), "one_worker_process_rps": round(remote, 2),
                                  "process_vs_in_process": round(remote / local, 3)}), flush=True)
    finally:
        pool.shutdown()


if __name__ == "__main__":
    main()
