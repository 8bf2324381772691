"""Train the demo model family, one stage per call:

    python -m training.train --stage vae               # AutoencoderKL f=8 + its scaling factor
    python -m training.train --stage base              # CLIP text encoder + UNet (ε-loss, CFG dropout)
    python -m training.train --stage base --resume --cosine-span 0.4,1   # continue a base run
    python -m training.train --stage inpaint           # 9-channel UNet from the base
    python -m training.train --stage controlnet-canny  # ControlNet on canny maps
    python -m training.train --stage controlnet-pose   # ControlNet on OpenPose maps

Each stage stops at --minutes (time spent in the optimisation loop) or --max-steps and writes
fp16 safetensors under --out (default assets/models). Defaults are the H100 settings the shipped
weights were trained with (docs/demo-model.md); a CPU smoke run is e.g.
`--device cpu --max-steps 2 --batch-size 2 --pool-size 8 --out /tmp/demo`.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from training import models

PROCESS_START = time.time()

# Per-stage H100 defaults: batch, pool of pre-rendered scenes, loop minutes.
STAGE_DEFAULTS = {
    "vae": dict(batch_size=64, pool_size=65536, minutes=2.5),
    "base": dict(batch_size=512, pool_size=393216, minutes=6.0),
    "inpaint": dict(batch_size=256, pool_size=65536, minutes=6.5),
    "controlnet-canny": dict(batch_size=256, pool_size=65536, minutes=6.5),
    "controlnet-pose": dict(batch_size=256, pool_size=49152, minutes=6.5),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", required=True, choices=list(STAGE_DEFAULTS))
    p.add_argument("--out", type=Path, default=models.MODELS_DIR, help="models folder (read and written)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0, help="data and initialisation seed")
    p.add_argument("--minutes", type=float, help="time budget of the training loop")
    p.add_argument("--deadline", type=float, help="minutes after process start at which the loop must end "
                   "(start-up, data and compilation included); overrides --minutes")
    p.add_argument("--max-steps", type=int, default=10**9)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--pool-size", type=int, help="scenes rendered and encoded up front")
    p.add_argument("--lr", type=float, help="peak learning rate (stage default if unset)")
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--resume", action="store_true", help="start from the stage's weights already in --out")
    p.add_argument("--cosine-span", default="0,1", help="part of one cosine schedule this run covers, e.g. 0.4,1")
    p.add_argument("--log-every", type=int, default=500)
    p.add_argument("--compile", action="store_true", help="torch.compile the trained network (GPU)")
    p.add_argument("--probe", type=int, default=0, help="base: held-out colour/shape probe of N prompts after training")
    p.add_argument("--stats", type=Path, help="append the stage's numbers as a JSON line here")
    args = p.parse_args(argv)
    for key, value in STAGE_DEFAULTS[args.stage].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.cosine_span = tuple(float(x) for x in args.cosine_span.split(","))
    args.deadline_at = PROCESS_START + 60 * args.deadline if args.deadline else None
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    from training.common import pick_device
    device = pick_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    started = time.time()
    if args.stage == "vae":
        from training.stages import vae as stage
        stats = stage.run(args, device)
    elif args.stage == "base":
        from training.stages import base as stage
        stats = stage.run(args, device)
        if args.probe:
            from training import evaluate
            stats["probe"] = evaluate.colour_probe(args.out, args.probe, device)
    elif args.stage == "inpaint":
        from training.stages import inpaint as stage
        stats = stage.run(args, device)
    else:
        from training.stages import controlnet as stage
        stats = stage.run(args, device, kind=args.stage.split("-", 1)[1])
    stats["wall_seconds"] = round(time.time() - started, 1)
    stats["device"] = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    if args.stats:
        with open(args.stats, "a") as f:
            f.write(json.dumps(stats) + "\n")
    print(json.dumps(stats), flush=True)
    return stats


if __name__ == "__main__":
    main()
