"""What a host sync inside the step loop costs: A1111's default sampler (Euler a) draws each
step's noise on the CPU and diffusers moved it to the GPU from pageable memory, which waits
for every queued kernel; a live preview's .cpu() did the same every 5th step. With CUDA graphs
the host runs ahead of the GPU, and each such wait lets the GPU idle while the host prepares
the next step. Now both go through pinned memory (pipelines/noise.py `without_host_sync`,
pipelines/preview.py `PreviewInFlight`), and the loop is paced instead (generation.py
RUN_AHEAD_STEPS: the host waits for the step 3 behind the one it launched, so the GPU always
has work queued while progress, previews and interrupts follow the device).

Rows, one manager (the app's default fast path, compiled graphs), SD 1.5 shapes with random
weights, fp16, 512², 30 steps, CFG 7.5, medians of --repeats, the before/after of each pair
interleaved run by run: Euler (draws no noise: what pacing alone costs), Euler a via run() (no
previews, as a bench or a batch job), Euler a via stream() (previews every 5th step, as the
browser tab and the REST API's progress get them). "before" puts the old code back for its
runs (the diffusers draw, the blocking preview, no pacing).

    PYTHONUNBUFFERED=1 python bench/gpu_host_syncs.py     # H200: ~2.5 min with a cold compile cache
    python bench/gpu_host_syncs.py --cpu-smoke             # tiny model on the CPU: a dry run
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_speed import PROMPT, budget_watchdog, build_random_sd15, log, psnr, timed  # noqa: E402

import torch  # noqa: E402

from pipelines import generation, noise  # noqa: E402
from pipelines.core.requests import Limits, Sampling, Txt2ImgRequest  # noqa: E402
from pipelines.fast_path import FastPath  # noqa: E402
from pipelines.manager import PipelineManager  # noqa: E402
from pipelines.preview import latent_to_image  # noqa: E402


def _blocking_preview(self, latent):
    """StepReporter._preview before PreviewInFlight: .cpu() at every due step."""
    due = self.steps_done % self.preview_every == 0 or self.steps_done == self.total
    return latent_to_image(latent, self.preview_weights()) if due else None


class Before:
    """The old step loop for the runs inside it: diffusers' own draw (pageable copy), the
    blocking preview, no pacing."""

    def __enter__(self):
        import diffusers.utils.torch_utils as torch_utils
        from diffusers.schedulers import scheduling_euler_ancestral_discrete as euler_a

        reporter = generation.StepReporter
        self.module, self.saved = euler_a, (generation.without_host_sync, reporter._preview, reporter._pace)
        generation.without_host_sync = lambda scheduler: scheduler
        reporter._preview, reporter._pace = _blocking_preview, lambda self: None
        euler_a.randn_tensor = torch_utils.randn_tensor
        return self

    def __exit__(self, *exc):
        generation.without_host_sync, generation.StepReporter._preview, generation.StepReporter._pace = self.saved
        self.module.randn_tensor = noise._step_noise


def request(args, scheduler: str) -> Txt2ImgRequest:
    return Limits().normalize(Txt2ImgRequest(prompt=PROMPT, width=args.size, height=args.size,
                                             sampling=Sampling(scheduler=scheduler, steps=args.steps, cfg_scale=7.5, seed=5)))


def via_run(manager, req):
    return manager.run(req), {}


def via_stream(manager, req):
    """The result, the previews that arrived, and when the middle step's report arrived (a
    fraction of the request's time: ~0.5 when progress follows the device)."""
    previews, start, middle = 0, time.perf_counter(), None
    for event in manager.stream(req):
        if hasattr(event, "preview"):
            previews += event.preview is not None
            if event.step == event.total // 2:
                middle = time.perf_counter() - start
        else:
            return event, dict(previews=previews, middle_step_reported_at=round(middle / (time.perf_counter() - start), 2))
    raise RuntimeError("the stream ended without a result")


def pair(manager, req, how, repeats: int) -> dict:
    """before/after, interleaved: seconds (medians), previews per request, the images' PSNR."""
    times, seen, images = {"before": [], "after": []}, {}, {}

    def once(name):
        with Before() if name == "before" else nullcontext():
            result, seen[name] = how(manager, req)
        images[name] = result.images[0].image

    for _ in range(repeats):
        for name in ("before", "after"):
            times[name] += timed(lambda: once(name), 1)
    before, after = statistics.median(times["before"]), statistics.median(times["after"])
    return dict(before_s=round(before, 4), after_s=round(after, 4), speedup=round(before / after, 3),
                **{f"{key}_{name}": value for name in ("before", "after") for key, value in seen[name].items()},
                psnr_before_vs_after_db=psnr(images["before"], images["after"]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--compile", default="full", choices=("none", "full"), help="the fast path's compile mode")
    parser.add_argument("--compile-wait-s", type=float, default=200)
    parser.add_argument("--budget-s", type=float, default=0, help="end with what was logged after this long")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny random model on the CPU, 64², 4 steps")
    args = parser.parse_args()
    if args.budget_s:
        budget_watchdog(args.budget_s)
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    with tempfile.TemporaryDirectory() as tmp:
        if cuda:
            folder, card = build_random_sd15(Path(tmp)) / "sd15", torch.cuda.get_device_name()
        else:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from tiny_sd import save_tiny_model

            args.size, args.steps, args.repeats = 64, 4, 2
            folder, card = save_tiny_model(Path(tmp) / "tiny"), "cpu (tiny model)"
        manager = PipelineManager(device="cuda" if cuda else "cpu", dtype="fp16" if cuda else None,
                                  fast_path=FastPath(compile=args.compile) if cuda else None)
        manager.load_base(str(folder))
        euler, euler_a = request(args, "Euler"), request(args, "Euler a")
        for req in (euler, euler_a, euler_a):  # the second call of a shape captures its graph
            manager.run(req)
        if manager.fast_runtime is not None and args.compile != "none":
            log(compiles_in=manager.fast_runtime.wait_idle(args.compile_wait_s))
        for req in (euler, euler_a):
            via_stream(manager, req)
        common = dict(card=card, size=args.size, steps=args.steps, compile=args.compile, repeats=args.repeats)
        plain = pair(manager, euler, via_run, args.repeats)  # before/after differ by the pacing alone
        log(row="Euler, run() (draws no noise)", **plain, **common)
        euler_s = plain["after_s"]
        for name, how in (("Euler a, run()", via_run), ("Euler a, stream() with previews every "
                                                        f"{manager.preview_every} steps", via_stream)):
            result = pair(manager, euler_a, how, args.repeats)
            log(row=name, **result, after_vs_euler=round(result["after_s"] / euler_s, 3), **common)
        if manager.fast_runtime is not None:
            log(served=dict(manager.fast_runtime.served()))


if __name__ == "__main__":
    main()
