"""The process boundary's host cost, on the CPU: requests per second of the tiny model (64²,
4 steps) through one worker process (serving/procs.py) vs the manager in this process, where
host overhead (pickling, previews, relaying, polling) is a large share of each request.

    OMP_NUM_THREADS=1 python bench/cpu_procs.py [--requests 24] [--concurrent 4]

Rows: run() without a progress callback (the bench's and a script's way: no steps wanted),
stream() (a UI's way: StepInfo with previews every step on a CPU), each serially and with
--concurrent threads at once; ratios vs the in-process manager in the same run. One JSON
line per measurement, with medians of --rounds alternating rounds and the CPU milliseconds
per request (this process + the worker process, from /proc: steadier than rates on a shared
machine).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipelines.core.requests import Limits, Sampling, Txt2ImgRequest  # noqa: E402


def cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system) of this process, or of another one from /proc (a worker)."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_round(backend, requests, concurrent: int, streamed: bool, pids) -> tuple[float, float, float]:
    """(requests per second, CPU milliseconds per request of this process, of the workers)."""
    def one(request):
        if streamed:
            for _ in backend.stream(request):
                pass
        else:
            backend.run(request)

    chunks = [requests[i::concurrent] for i in range(concurrent)]
    front, workers = cpu_s(), sum(cpu_s(p) for p in pids)
    started = time.perf_counter()
    threads = [threading.Thread(target=lambda c=c: [one(r) for r in c]) for c in chunks]
    [t.start() for t in threads]
    [t.join() for t in threads]
    wall = time.perf_counter() - started
    front, workers = cpu_s() - front, sum(cpu_s(p) for p in pids) - workers
    return len(requests) / wall, 1000 * front / len(requests), 1000 * workers / len(requests)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--concurrent", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per row; medians reported")
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
    pids = [p for p in pool.worker_pids() if p]
    try:
        for backend in (manager, pool):  # warm both (first-call allocations, lazy imports)
            one_round(backend, requests[:4], 1, False, [])
        for streamed in (False, True):
            for concurrent in (1, args.concurrent):
                local, remote = [], []
                for _ in range(args.rounds):  # alternate, so a busy moment of this shared machine hits both
                    local.append(one_round(manager, requests, concurrent, streamed, []))
                    remote.append(one_round(pool, requests, concurrent, streamed, pids))
                (l_rps, l_ms, _), (r_rps, r_front, r_worker) = (tuple(statistics.median(x) for x in zip(*rows))
                                                                 for rows in (local, remote))
                print(json.dumps({"call": "stream" if streamed else "run", "concurrent": concurrent,
                                  "in_process_rps": round(l_rps, 2), "one_worker_process_rps": round(r_rps, 2),
                                  "process_vs_in_process": round(r_rps / l_rps, 3),
                                  "cpu_ms_per_request": {"in_process": round(l_ms, 1), "pool_front_end": round(r_front, 1),
                                                         "pool_worker": round(r_worker, 1)},
                                  "cpu_process_vs_in_process": round((r_front + r_worker) / l_ms, 3)}), flush=True)
    finally:
        pool.shutdown()


if __name__ == "__main__":
    main()
