"""--warmup: compile and capture the common shapes at start, so that even the first user
request runs on compiled CUDA graphs (without it, the first request of a new shape runs
eager and the fast path catches up in the background: fast_path.py).

One short CFG txt2img request per size covers txt2img, img2img and RePaint inpainting at
that size (they share the UNet call's shapes; RePaint's integer timesteps are cast to
float). ControlNet and the 9-channel inpainting UNet load with their first request and
upgrade in the background then.

Batch shapes: a manager that batches (pipelines/batching.py, max_batch > 1) runs B waiting
requests as one UNet call of 2·B latents (CFG), a shape of its own. So for B = 2 … max_batch
the warm-up also queues B requests side by side in the manager's line and lets the real
batching path serve them together. Only the UNet sees a new shape then: a batch encodes each
member's prompts and decodes each member's latents on their own (batching.sample_together),
at the shapes a lone request already warmed; one request with batch_size = B would not
do (its VAE decode takes B latents at once, a shape no batch of users makes). One batched
round per shape is enough: its 2 steps are the UNet's first two calls of that shape (eager,
then captured in the request, fast_path.FastCall), and the compile is queued then.

Each (size, batch) is one more signature of the UNet's FastCall, which keeps at most
FastPath.max_signatures of them fast (beyond the limit a shape runs eager for good). The
warm-up takes at most half of them, so that shapes met later still get theirs (a hires second
pass, another size, batches without CFG): batch 1 of every size first, then batch 2 of every
size, and so on, as far as they fit; a log line names the shapes left out.
"""
from __future__ import annotations

import logging
import threading
import time

from .requests import Limits, Sampling, Txt2ImgRequest

log = logging.getLogger(__name__)

QUEUE_TIMEOUT_S = 60.0  # for B warm-up requests to be waiting in the manager's line


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


def batch_plan(sizes: list[tuple[int, int]], max_batch: int, max_signatures: int | None
               ) -> tuple[list[tuple[tuple[int, int], int]], list[tuple[tuple[int, int], int]]]:
    """((size, batch) to warm, (size, batch) left out): batch 1 of every size (always, as
    before batching), then batch 2 of every size, …, up to max_batch, while they fit in half
    of the UNet's max_signatures (None: no limit); the other half stays for later shapes."""
    sizes = list(dict.fromkeys(sizes))  # a size given twice is warmed once
    wanted = [(size, batch) for batch in range(1, max(1, max_batch) + 1) for size in sizes]
    room = len(wanted) if max_signatures is None else max(max_signatures // 2, len(sizes))
    return wanted[:room], wanted[room:]


def _request(width: int, height: int, seed: int) -> Txt2ImgRequest:
    return Limits().normalize(Txt2ImgRequest(prompt="warm-up", width=width, height=height,
                                             sampling=Sampling(steps=2, cfg_scale=7.0, seed=seed)))


def run_side_by_side(manager, requests: list) -> tuple[list, list[int]]:
    """The requests from threads of their own, all waiting in the manager's line before the
    first one starts, so the manager's batching serves them as it would serve users who
    arrived together. Returns their results in order and the batch sizes served meanwhile."""
    batching = manager.batching
    results: list = [None] * len(requests)
    errors: list[BaseException] = []
    served_before = len(batching.served)

    def run(i):
        try:
            results[i] = manager.run(requests[i])
        except BaseException as error:  # noqa: BLE001 — raised in the caller's thread below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,), name="side-by-side", daemon=True) for i in range(len(requests))]
    with batching.lock:  # the line is held: every request queues behind it
        waiting_before = batching.waiting
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + QUEUE_TIMEOUT_S
        while (batching.waiting - waiting_before < len(requests) and time.monotonic() < deadline
               and not errors):
            time.sleep(0.005)
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results, batching.served[served_before:]


def warm_up(manager, sizes: list[tuple[int, int]], timeout: float = 900.0) -> float:
    """Run a 2-step request twice per size, then one round of B requests batched together per
    size for every batch shape the manager can form (B = 2 … max_batch, as many as the fast
    path keeps), then wait until the background upgrades are installed. Returns the seconds it took."""
    started = time.perf_counter()
    runtime = getattr(manager, "fast_runtime", None)
    limit = runtime.config.max_signatures if runtime is not None else None
    max_batch = int(getattr(manager, "max_batch", 1) or 1) if hasattr(manager, "batching") else 1
    plan, left_out = batch_plan(sizes, max_batch, limit)
    if left_out:
        log.warning("warm-up: the fast path keeps %d UNet shapes fast (FastPath.max_signatures: sizes × batch "
                    "shapes), the warm-up takes half of them; left out (compiled when first met): %s", limit, ", ".join(f"{w}x{h} batch {b}" for (w, h), b in left_out))
    formed: list[str] = []
    for (width, height), batch in plan:
        if batch == 1:
            request = _request(width, height, 0)
            manager.run(request)
            manager.run(request)  # the VAE decode and text encoder upgrade on their second call
            continue
        requests = [_request(width, height, seed) for seed in range(batch)]
        largest = max(run_side_by_side(manager, requests)[1], default=0)
        formed.append(f"{width}x{height} batch {batch}")
        if largest != batch:  # another request joined or the model cannot batch: said, never fatal
            log.warning("warm-up: %dx%d batch %d was served as batches of at most %d", width, height, batch, largest)
    if runtime is not None and not runtime.wait_idle(timeout):
        log.warning("warm-up: background compilation still running after %.0fs; serving meanwhile", timeout)
    seconds = time.perf_counter() - started
    log.info("warm-up of %s%s done in %.1fs", ", ".join(f"{w}x{h}" for w, h in dict.fromkeys(sizes)),
             f" (and batched: {', '.join(formed)})" if formed else "", seconds)
    return seconds
