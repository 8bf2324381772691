"""Latency of each ControlNet preprocessor on this machine, on scikit-image's astronaut photo.

    python bench/preprocess_latency.py                 # 512×512, 20 repeats
    python bench/preprocess_latency.py --size 768 --repeats 10

Prints one JSON line per preprocessor: the first call in this process (cold: lazy imports and
model loading, e.g. mediapipe's graph) and the steady state (median, p90, min over repeats)
of control_map() at the given size, fitting included (a no-op when the photo is that size).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
from PIL import Image  # noqa: E402

from pipelines.preprocess_extra import available_preprocessors, control_map  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--only", nargs="*", help="preprocessor names (default: every available one)")
    args = parser.parse_args()

    photo = Image.fromarray(skimage.data.astronaut())
    names = args.only or available_preprocessors()
    for name in names:
        start = time.perf_counter()
        first = control_map(name, photo, args.size, args.size)
        cold = time.perf_counter() - start
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            control_map(name, photo, args.size, args.size)
            times.append(time.perf_counter() - start)
        times.sort()
        print(json.dumps({
            "preprocessor": name,
            "size": f"{args.size}x{args.size}",
            "cold_ms": round(cold * 1000, 1),
            "median_ms": round(statistics.median(times) * 1000, 2),
            "p90_ms": round(times[int(0.9 * (len(times) - 1))] * 1000, 2),
            "min_ms": round(times[0] * 1000, 2),
            "repeats": args.repeats,
            "ok": first.ok,
            "nonzero_fraction": round(float((np.asarray(first.image) > 0).any(axis=2).mean()), 4),
            "cpu": f"{platform.machine()} x{os.cpu_count()}",
        }), flush=True)


if __name__ == "__main__":
    main()
