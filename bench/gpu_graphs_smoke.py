"""Graphs-only smoke on a GPU (--fast-path none): txt2img, RePaint and ControlNet requests in a
fresh process, each with its time and the paths that served its calls. ~40 s on an H200
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
    for name in ["txt2img"] * 3 + ["inpaint RePaint r=1"] * 2 + ["controlnet 1 unit"] * 2:
        torch.cuda.synchronize()
        started = time.perf_counter()
        manager.run(requests[name])
        torch.cuda.synchronize()
        print(name, round(time.perf_counter() - started, 3), dict(manager.fast_runtime.served()), flush=True)
    manager.fast_runtime.wait_idle(30)
    print(json.dumps({call.name: dict(call.served) for call in manager.fast_runtime.calls}),
          [event for _, event in manager.fast_runtime.events], flush=True)
    os._exit(0)  # no interpreter teardown under the worker thread


if __name__ == "__main__":
    main()
