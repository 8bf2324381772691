"""Throughput for many users: 8 txt2img requests from 8 threads calling manager.run at once,
with request batching (pipelines/batching.py) on at --max-batch 4 and 8, against the same 8
requests one after another and against 8 concurrent ones with batching off. One process, one
manager (the same weights), the fast path with compile="none" by default (CUDA graphs only:
every new batch shape is a new signature); `--compile full` (the app's default) waits after
each configuration's warm-up rounds for the background compiles of the shapes it met
(`--compile-wait-s`), then warms once more, so the timed rounds run compiled graphs.
SD 1.5 shapes with random weights, fp16, 512², 30 steps, CFG 7.5, Euler a; every request its
own prompt, seed and CFG scale.

    PYTHONUNBUFFERED=1 python bench/gpu_batching.py            # H200: well under 2 minutes
    PYTHONUNBUFFERED=1 python bench/gpu_batching.py --compile full --max-batch 4   # ~7 min cold
    python bench/gpu_batching.py --cpu-smoke                   # tiny model on the CPU: a dry run

`--rest` adds, per --max-batch, the same 8 as REST API jobs through the app's line (api/jobs.py
over serving/fair.py, without HTTP): what an A1111 client's burst gets.

One JSON line per measurement: seconds for the 8 (median of --repeats rounds, after warm-up
rounds that capture the graphs of new shapes), images per second, ratios against serial in the same
run, the batch sizes served, mean/max per-request latency (last round), and the lowest PSNR of
a batched image against the same request run alone.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_speed import budget_watchdog, build_random_sd15, log, median_s, psnr, section  # noqa: E402

import torch  # noqa: E402

from pipelines.core.requests import Limits, Sampling, Txt2ImgRequest  # noqa: E402
from pipelines.fast_path import FastPath  # noqa: E402
from pipelines.manager import PipelineManager  # noqa: E402

SUBJECTS = ["an astronaut riding a horse", "a red fox in snow", "a lighthouse at dusk", "a bowl of ramen",
            "a castle on a hill", "a robot reading a book", "a sailing ship in a storm", "a field of sunflowers"]


def requests(args, n: int = 8) -> list[Txt2ImgRequest]:
    limits = Limits(max_width=4096, max_height=4096)
    return [limits.normalize(Txt2ImgRequest(
        prompt=f"a photograph of {SUBJECTS[i % len(SUBJECTS)]}", negative_prompt="blurry" if i % 2 else "",
        width=args.size, height=args.size,
        sampling=Sampling(scheduler="Euler a", steps=args.steps, seed=1000 + i, cfg_scale=7.5 - 0.5 * (i % 3))))
        for i in range(n)]


def set_batching(manager: PipelineManager, max_batch: int) -> None:
    """Batching on (max_batch > 1) or off, on the same manager and weights."""
    manager.max_batch = manager.batching.max_batch = max_batch


def serial(manager, batch):
    return [manager.run(r) for r in batch]


LAST: dict = {}  # the latest concurrent round: results and per-request latencies


def concurrent(manager, batch):
    results, latencies = [None] * len(batch), []
    start = time.perf_counter()

    def one(i):
        results[i] = manager.run(batch[i])
        latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(batch))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    LAST.update(results=results, latencies=latencies)
    return results


def through_rest(jobs, batch):
    """The same 8 as REST API jobs (api/jobs.py over serving/fair.py, the app's line), all
    submitted at once from one event loop, without the HTTP layer around them."""
    import asyncio

    async def all_of_them():
        return await asyncio.gather(*(jobs.run(request, caller=f"client {i}") for i, request in enumerate(batch)))

    start = time.perf_counter()
    results = asyncio.run(all_of_them())
    LAST.update(results=results, latencies=[time.perf_counter() - start])
    return results


def seconds(fn, repeats: int, warm: int = 2, runtime=None, wait_s: float = 0) -> float:
    for _ in range(warm):  # the second call of every new shape captures its graph
        fn()
    if runtime is not None and wait_s:  # --compile full: the shapes met above, compiled
        log(compiles_in=runtime.wait_idle(wait_s))
        fn()
    before = runtime.served() if runtime is not None else None
    result = median_s(fn, repeats)
    LAST["served"] = dict(runtime.served() - before) if runtime is not None else None  # the timed rounds'
    return result


@section("batching")
def bench_batching(folder: Path, card: str, args) -> None:
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    model = folder / "sd15" if (folder / "sd15").exists() else folder
    manager = PipelineManager(device="cuda" if cuda else "cpu", dtype="fp16" if cuda else None,
                              fast_path=FastPath(compile=args.compile) if cuda else None, max_batch=1)
    manager.load_base(str(model))
    batch = requests(args)
    common = dict(card=card, size=args.size, steps=args.steps, requests=len(batch), compile=args.compile)
    runtime = manager.fast_runtime if args.compile != "none" else None
    wait = dict(runtime=runtime, wait_s=args.compile_wait_s)

    set_batching(manager, 1)
    alone = serial(manager, batch)
    serial_s = seconds(lambda: serial(manager, batch), args.repeats, warm=1, **wait)
    log(config="8 requests one after another", s=serial_s, images_per_s=round(len(batch) / serial_s, 3), ratio=1.0,
        **common)
    off_s = seconds(lambda: concurrent(manager, batch), args.repeats, warm=0, **wait)  # the serial shapes
    log(config="8 concurrent, batching off", s=off_s, images_per_s=round(len(batch) / off_s, 3),
        ratio=round(serial_s / off_s, 3), **common)
    for max_batch in args.max_batch:
        set_batching(manager, max_batch)
        before = len(manager.batching.served)
        on_s = seconds(lambda: concurrent(manager, batch), args.repeats, **wait)
        served = manager.batching.served[before:]
        together, latencies = LAST["results"], LAST["latencies"]
        log(config=f"8 concurrent, batching on (--max-batch {max_batch})", s=on_s,
            images_per_s=round(len(batch) / on_s, 3), ratio=round(serial_s / on_s, 3),
            ratio_vs_batching_off=round(off_s / on_s, 3), batch_sizes_served=served[-12:],
            latency_mean_s=round(statistics.mean(latencies), 3), latency_max_s=round(max(latencies), 3),
            psnr_vs_alone_db=min(psnr(a.images[0].image, b.images[0].image) for a, b in zip(alone, together)),
            served_during=LAST["served"], **common)
        if args.rest:
            from api.jobs import ApiJobs
            from serving.fair import FairGate

            # the app's line in front of this manager: 2 × max_batch let in at once (manager.concurrency)
            jobs = ApiJobs(FairGate(manager, slots=2 * max_batch), max_jobs=64)
            before = len(manager.batching.served)
            rest_s = seconds(lambda: through_rest(jobs, batch), args.repeats, warm=1, **wait)
            log(config=f"8 concurrent REST API jobs, batching on (--max-batch {max_batch})", s=rest_s,
                images_per_s=round(len(batch) / rest_s, 3), ratio=round(serial_s / rest_s, 3),
                ratio_vs_direct=round(on_s / rest_s, 3), batch_sizes_served=manager.batching.served[before:][-12:],
                psnr_vs_alone_db=min(psnr(a.images[0].image, b.images[0].image) for a, b in zip(alone, LAST["results"])),
                served_during=LAST["served"], **common)
    set_batching(manager, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-batch", type=lambda text: [int(x) for x in text.split(",")], default=[4, 8])
    parser.add_argument("--compile", default="none", choices=("none", "full"), help="the fast path's compile mode")
    parser.add_argument("--compile-wait-s", type=float, default=240, help="with --compile full: longest wait per configuration")
    parser.add_argument("--budget-s", type=float, default=0, help="end with what was logged after this long")
    parser.add_argument("--rest", action="store_true", help="also the 8 as REST API jobs through the app's line")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny random model on the CPU, 64², 4 steps")
    args = parser.parse_args()
    if args.budget_s:
        budget_watchdog(args.budget_s)
    with tempfile.TemporaryDirectory() as tmp:
        if args.cpu_smoke or not torch.cuda.is_available():
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from tiny_sd import save_tiny_model

            args.size, args.steps, args.repeats = 64, 4, 1
            args.cpu_smoke = True
            folder, card = save_tiny_model(Path(tmp) / "tiny"), "cpu (tiny model)"
        else:
            folder, card = build_random_sd15(Path(tmp)), torch.cuda.get_device_name()
        bench_batching(folder, card, args)


if __name__ == "__main__":
    main()
