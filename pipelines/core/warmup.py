"""--warmup: compile and capture the common shapes at start, so that even the first user
request runs on compiled CUDA graphs (without it, the first request of a new shape runs
eager and the fast path catches up in the background: fast_path.py).

One short CFG txt2img request per size covers txt2img, img2img and RePaint inpainting at
that size (they share the UNet call's shapes; RePaint's integer timesteps are cast to
float). ControlNet and the 9-channel inpainting UNet load with their first request and
upgrade in the background then.
"""
from __future__ import annotations

import logging
import time

from .requests import Limits, Sampling, Txt2ImgRequest

log = logging.getLogger(__name__)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'512,768x512' → [(512, 512), (768, 512)] (width × height)."""
    sizes = []
    for part in (text or "").replace(" ", "").split(","):
        if not part:
            continue
        width, _, height = part.lower().partition("x")
        try:
            sizes.append((int(width), int(height or width)))
        except ValueError:
            raise ValueError(f"--warmup takes sizes like 512 or 768x512, comma-separated; got {part!r}") from None
    return sizes


def warm_up(manager, sizes: list[tuple[int, int]], timeout: float = 900.0) -> float:
    """Run a 2-step request twice per size, then wait until the background upgrades are installed.
    Returns the seconds it took."""
    started = time.perf_counter()
    limits = Limits()
    for width, height in sizes:
        request = limits.normalize(Txt2ImgRequest(prompt="warm-up", width=width, height=height,
                                                  sampling=Sampling(steps=2, cfg_scale=7.0, seed=0)))
        manager.run(request)
        manager.run(request)  # the VAE decode and text encoder upgrade on their second call
    runtime = getattr(manager, "fast_runtime", None)
    if runtime is not None and not runtime.wait_idle(timeout):
        log.warning("warm-up: background compilation still running after %.0fs; serving meanwhile", timeout)
    seconds = time.perf_counter() - started
    log.info("warm-up of %s done in %.1fs", ", ".join(f"{w}x{h}" for w, h in sizes), seconds)
    return seconds
