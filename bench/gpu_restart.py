"""A restart with the compile cache warm: a new process loads the models bench/gpu_speed.py
kept (--keep), runs --warmup for the given sizes, then one request; reports the warm-up
seconds and which path served the first user request. Run it right after gpu_speed.py with
the same TORCHINDUCTOR_CACHE_DIR.

    PYTHONUNBUFFERED=1 python bench/gpu_restart.py --folder /tmp/sd15bench --sizes 512
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folder", required=True)
    parser.add_argument("--sizes", default="512")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    t0 = time.perf_counter()
    import torch

    from pipelines.manager import PipelineManager
    from pipelines.core.requests import Limits, Sampling, Txt2ImgRequest
    from pipelines.core.warmup import parse_sizes, warm_up

    manager = PipelineManager(device="cuda", dtype="fp16")
    manager.load_base(str(Path(args.folder) / "sd15"))
    loaded = time.perf_counter() - t0
    warm = warm_up(manager, parse_sizes(args.sizes))
    width, height = parse_sizes(args.sizes)[0]
    request = Limits().normalize(Txt2ImgRequest(prompt="an astronaut", width=width, height=height,
                                                sampling=Sampling(scheduler="Euler", steps=args.steps, cfg_scale=7.5, seed=1)))
    before = dict(manager.fast_runtime.served())
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    manager.run(request)
    torch.cuda.synchronize()
    first = time.perf_counter() - t1
    after = manager.fast_runtime.served()
    print(json.dumps({"restart": "warm compile cache", "cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
                      "start_to_loaded_s": round(loaded, 1), "warmup_s": round(warm, 1),
                      "first_request_s": round(first, 3),
                      "first_request_served": {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)},
                      "events": [e for _, e in manager.fast_runtime.events]}), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
