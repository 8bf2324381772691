"""Start-to-ready time of `python app.py` and its first txt2img over HTTP.

    python bench/app_startup.py                       # on the embedded demo model
    python bench/app_startup.py --model path/to/model
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import AppServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="")
    parser.add_argument("--size", type=int, default=0, help="0: the model's native size")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    from gradio_client import Client

    flags = ["--no-save-outputs"] + (["--model", args.model] if args.model else [])
    started = time.perf_counter()
    server = AppServer(flags, log_path=Path("/tmp/sd-studio-bench.log"))
    try:
        server.wait_ready(timeout=300)
        ready = time.perf_counter() - started
        client = Client(server.url, verbose=False)
        size = args.size or next(c["props"]["value"] for c in client.config["components"]
                                 if c.get("props", {}).get("elem_id") == "txt2img_width")
        times = []
        for _ in range(3):
            t = time.perf_counter()
            client.predict("a large red circle on a white background", "", "Euler a", args.steps, True, 7, 0, 1, 1, 1,
                           size, size, api_name="/txt2img")
            times.append(time.perf_counter() - t)
        print(json.dumps({"start_to_ready_s": round(ready, 1), "size": size, "steps": args.steps,
                          "first_txt2img_s": round(times[0], 2), "warm_txt2img_s": round(min(times[1:]), 2)}), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
