"""Cost of A1111-style prompt encoding (chunks, emphasis, clip skip) against diffusers' own
encode_prompt on the same pipeline, as ratios measured in one run (CPU by default).

    python bench/prompt_encoding.py                      # the shipped demo model, 30 repeats
    python bench/prompt_encoding.py --model PATH --device cuda

Rows: a short prompt (1 chunk; what diffusers also does), the same with emphasis, clip skip 2,
and a 3-chunk prompt (diffusers would cut it at 77 tokens: its time is the 1-chunk baseline).
Each prints the median time and its ratio to diffusers' encode_prompt of the short prompt.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402

from pipelines.prompt_encoding import encode_prompts  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "assets" / "models" / "demo"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    dtype = torch.float32 if args.device == "cpu" else torch.float16
    pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype, safety_checker=None).to(args.device)
    short = "a large red circle on a white background, centred, flat colours"
    long = ", ".join([short] * 14)  # ~200 tokens: 3 chunks
    device = torch.device(args.device)
    with torch.no_grad():
        baseline = median_seconds(lambda: pipe.encode_prompt(short, device, 1, True, ""), args.repeats)
        rows = {
            "diffusers encode_prompt, 1 chunk": baseline,
            "ours, 1 chunk": median_seconds(lambda: encode_prompts(pipe, short, "", 1, True, device), args.repeats),
            "ours, 1 chunk, emphasis": median_seconds(
                lambda: encode_prompts(pipe, "a large (red:1.3) circle, [white] background", "", 1, True, device), args.repeats),
            "ours, 1 chunk, clip skip 2": median_seconds(lambda: encode_prompts(pipe, short, "", 2, True, device), args.repeats),
            "ours, 3 chunks": median_seconds(lambda: encode_prompts(pipe, long, "", 1, True, device), args.repeats),
        }
    for name, seconds in rows.items():
        print(json.dumps({"row": name, "median_ms": round(seconds * 1e3, 3), "ratio_to_diffusers": round(seconds / baseline, 2),
                          "device": args.device, "model": Path(args.model).name}))


if __name__ == "__main__":
    main()
