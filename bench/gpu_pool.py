"""Several GPUs in one host: throughput of a ManagerPool (one manager and weight copy per
device) against one device, same process, SD 1.5-shaped random weights, fp16, 512², 30 steps.
(`--devices` now starts a worker process per GPU instead: bench/gpu_procs.py measures that.)

    PYTHONUNBUFFERED=1 python bench/gpu_pool.py [--requests 8] [--fast-path regional|none]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import torch  # noqa: E402

from gpu_speed import PROMPT, build_random_sd15  # noqa: E402
from pipelines.fast_path import FastPath  # noqa: E402
from pipelines.manager import PipelineManager  # noqa: E402
from pipelines.core.requests import Limits, Sampling, Txt2ImgRequest  # noqa: E402
from serving.pool import ManagerPool  # noqa: E402


def run_concurrently(backend, requests) -> tuple[float, Counter]:
    workers, lock = Counter(), threading.Lock()

    def one(request):
        try:
            worker = backend.run(request).worker
        except Exception as error:  # counted, so a failure shows in the figures
            worker = f"failed: {type(error).__name__}: {error}"
        with lock:
            workers[worker] += 1

    threads = [threading.Thread(target=one, args=(r,)) for r in requests]
    started = time.perf_counter()
    [t.start() for t in threads]
    [t.join() for t in threads]
    return time.perf_counter() - started, workers


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--fast-path", default="none", choices=("none", "regional", "full"))
    args = parser.parse_args()
    devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    folder = build_random_sd15(Path(tempfile.mkdtemp()) / "sd15-random")
    # As app.py builds a pool: compiled, no CUDA graphs (capture while another device works aborts)
    fast = None if args.fast_path == "none" else FastPath(compile=args.fast_path, cuda_graphs=len(devices) == 1)
    managers = [PipelineManager(device=d, dtype="fp16", fast_path=fast) for d in devices]
    pool = ManagerPool(managers)
    pool.load_base(str(folder))
    requests = [Limits().normalize(Txt2ImgRequest(prompt=PROMPT, width=512, height=512,
                                                  sampling=Sampling(scheduler="Euler", steps=30, seed=i)))
                for i in range(args.requests)]
    run_concurrently(pool, requests[: 2 * len(devices)])  # warm every device
    one_device, _ = run_concurrently(managers[0], requests)
    pooled, spread = run_concurrently(pool, requests)
    print(json.dumps({"card": torch.cuda.get_device_name(), "devices": len(devices), "requests": args.requests,
                      "fast_path": args.fast_path, "one_device_s": round(one_device, 2), "pool_s": round(pooled, 2),
                      "throughput_ratio": round(one_device / pooled, 2), "jobs_per_worker": dict(spread)}), flush=True)


if __name__ == "__main__":
    main()
