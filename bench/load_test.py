"""Load test: N concurrent gradio_client sessions against one app on loopback (tiny model by
default). Reports every request answered or not, p50/p95 latency, and the server's RSS
over the run (flat = no leak).

    python bench/load_test.py                      # 20 clients, 200 requests, tiny model
    python bench/load_test.py --clients 20 --requests 200 --model assets/models/demo --size 128
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

import psutil  # noqa: E402
from gradio_client import Client  # noqa: E402

from conftest import AppServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--model", default="")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--queue-size", type=int, default=256)
    args = parser.parse_args()
    model = args.model
    if not model:
        from tiny_sd import save_tiny_model

        model = str(save_tiny_model(Path(tempfile.mkdtemp()) / "tiny-sd"))
    server = AppServer(["--model", model, "--no-save-outputs", "--queue-size", str(args.queue_size)],
                       log_path=Path(tempfile.mkdtemp()) / "app.log")
    server.wait_ready()
    process = psutil.Process(server.process.pid)
    rss: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample_memory():
        while not stop.is_set():
            rss.append((time.perf_counter(), process.memory_info().rss / 2**20))
            stop.wait(0.5)

    latencies, failures = [], []
    lock = threading.Lock()
    counter = iter(range(args.requests))

    def client_loop(index: int):
        client = Client(server.url, verbose=False)
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                return
            started = time.perf_counter()
            try:
                _, gallery, _, infotext = client.predict(f"request {n}", "", "Euler", args.steps, True, 7, 0, n, 1, 1,
                                                         args.size, args.size, api_name="/txt2img")
                ok = len(gallery) == 1 and infotext.startswith(f"request {n}\n") and f"Seed: {n}," in infotext
                with lock:
                    (latencies if ok else failures).append(time.perf_counter() - started if ok else f"{n}: wrong result")
            except Exception as error:
                with lock:
                    failures.append(f"{n}: {error}")

    try:
        # warm up once, then measure
        Client(server.url, verbose=False).predict("warm", "", "Euler", args.steps, True, 7, 0, 0, 1, 1, args.size,
                                                  args.size, api_name="/txt2img")
        threading.Thread(target=sample_memory, daemon=True).start()
        started = time.perf_counter()
        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(args.clients)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        wall = time.perf_counter() - started
    finally:
        stop.set()
        server.stop()
    latencies.sort()
    quarter = max(1, len(rss) // 4)
    print(json.dumps({
        "clients": args.clients, "requests": args.requests, "answered_correctly": len(latencies), "failed": len(failures),
        "p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3) if latencies else None,
        "throughput_per_s": round(len(latencies) / wall, 2),
        "rss_mib_first_quarter": round(statistics.mean(m for _, m in rss[:quarter]), 1),
        "rss_mib_last_quarter": round(statistics.mean(m for _, m in rss[-quarter:]), 1),
        "failures": failures[:5],
    }), flush=True)


if __name__ == "__main__":
    main()
