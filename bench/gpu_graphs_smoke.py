"""Graphs-only smoke on a GPU (--fast-path none): txt2img, RePaint and ControlNet requests in a
fresh process, each with its time and the paths that served its calls, how many ControlNet
steps ran on two streams, and the ControlNet image against the plain manager's. ~40 s on an H200
(bench/results/h200-2026-11-30/run4-graphs-only-smoke.log).

    PYTHONUNBUFFERED=1 python bench/gpu_graphs_smoke.py
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from gpu_speed import build_random_sd15, mode_requests  # noqa: E402
from PIL import Image  # noqa: E402

from pipelines.fast_path import FastPath  # noqa: E402
from pipelines.manager import PipelineManager  # noqa: E402


def main() -> None:
    folder = build_random_sd15(Path(tempfile.mkdtemp()))
    manager = PipelineManager(device="cuda", dtype="fp16", fast_path=FastPath(compile="none"))
    manager.load_base(str(folder / "sd15"))
    requests = mode_requests(folder, SimpleNamespace(size=512, steps=30), Image.new("RGB", (512, 512), (90, 120, 200)))
    times = {}
    for name in ["txt2img"] * 4 + ["inpaint RePaint r=1"] * 2 + ["controlnet 1 unit"] * 4:
        torch.cuda.synchronize()
        started = time.perf_counter()
        result = manager.run(requests[name])
        torch.cuda.synchronize()
        times.setdefault(name, []).append(round(time.perf_counter() - started, 3))
        print(name, times[name][-1], dict(manager.fast_runtime.served()),
              "ControlNet steps on two streams:", manager.fast_runtime.overlap.overlapped, flush=True)
    print(json.dumps({"controlnet_vs_txt2img_on_graphs": round(times["controlnet 1 unit"][-1] / times["txt2img"][-1], 3)}))
    # The overlapped ControlNet image against the plain (no fast path) manager's, same seed.
    plain = PipelineManager(device="cuda", dtype="fp16", fast_path=None)
    plain.load_base(str(folder / "sd15"))
    a = np.asarray(result.images[0].image, np.float64)
    b = np.asarray(plain.run(requests["controlnet 1 unit"]).images[0].image, np.float64)
    mse = ((a - b) ** 2).mean()
    print(json.dumps({"controlnet_fast_vs_plain": "identical" if mse == 0 else f"PSNR {10 * np.log10(255 ** 2 / mse):.1f} dB"}))
    manager.fast_runtime.wait_idle(30)
    print(json.dumps({call.name: dict(call.served) for call in manager.fast_runtime.calls}),
          [event for _, event in manager.fast_runtime.events], flush=True)
    os._exit(0)  # no interpreter teardown under the worker thread


if __name__ == "__main__":
    main()
