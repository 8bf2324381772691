"""The background compile's yield to requests (pipelines/compile_yield.py), on the CPU with the
tiny UNet (tests/tiny_sd.py): one process, ratios against baselines of the same run.

1. What the mechanism costs a compile with no request running: a real torch.compile plain,
   inside CompileGate.yielding() (the gc checkpoint only), and under an always-installed
   sys.setprofile hook (the naive design), alternating.
2. What a compile costs a request: a request (N eager UNet forwards) while a compile runs in
   another thread, competing (yield off) vs yielding, against the request's quiet time; and
   the compile thread's own CPU time during each request (how soon it noticed).

    OMP_NUM_THREADS=1 python bench/cpu_compile_yield.py [--backend aot_eager|inductor] [--rounds 2]

aot_eager is dynamo + AOTAutograd tracing (pure Python, the part that holds the GIL);
inductor adds codegen and a C++ compiler subprocess (on a 2-core machine that subprocess
competes for the cores too, which no GIL yield can help).
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")  # a real compile every time
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import torch  # noqa: E402

from gpu_speed import log, section  # noqa: E402
from pipelines.compile_yield import CompileGate  # noqa: E402
from tiny_sd import tiny_unet  # noqa: E402

UNET = tiny_unet().eval()
INPUTS = (torch.randn(2, 4, 8, 8), torch.tensor(500.0), torch.randn(2, 77, 32))


def forward(x, t, c):
    return UNET(x, t, c, return_dict=False)[0]


def _noop_profile(frame, event, arg):
    return None


def compile_once(backend: str, how: str = "plain", gate: CompileGate | None = None) -> float:
    torch._dynamo.reset()
    compiled = torch.compile(forward, fullgraph=True, dynamic=False, backend=backend)
    started = time.perf_counter()
    if how == "always-on hook":
        sys.setprofile(_noop_profile)
    try:
        with torch.no_grad():
            if how == "gate":
                with (gate or CompileGate()).yielding():
                    compiled(*INPUTS)
            else:
                compiled(*INPUTS)
    finally:
        sys.setprofile(None)
    return time.perf_counter() - started


@section("hook cost")
def hook_cost(args):
    compile_once(args.backend)  # imports and lazy initialisation out of the way
    times = {"plain": [], "gate": [], "always-on hook": []}
    order = list(times)
    for round_ in range(args.rounds):
        for how in order[round_ % 3:] + order[:round_ % 3]:  # rotated: no method always runs first
            times[how].append(round(compile_once(args.backend, how), 2))
    best = {how: min(values) for how, values in times.items()}
    log(measure="compile time, no request running", backend=args.backend, seconds=times,
        gate_vs_plain=round(best["gate"] / best["plain"], 3), hook_vs_plain=round(best["always-on hook"] / best["plain"], 2))


def request(forwards: int) -> float:
    started = time.perf_counter()
    with torch.no_grad():
        for _ in range(forwards):
            forward(*INPUTS)
    return time.perf_counter() - started


@section("requests during a compile")
def requests_during_compile(args):
    request(args.forwards)
    quiet = min(request(args.forwards) for _ in range(5))
    for share in (0.0, 0.75):  # 0: the compile never pauses (competing)
        gate = CompileGate(share=share)
        done, ident = threading.Event(), []

        def compile_some():
            ident.append(threading.get_ident())
            for _ in range(args.compiles):
                compile_once(args.backend, "gate", gate)
            done.set()

        worker = threading.Thread(target=compile_some, daemon=True)
        worker.start()
        time.sleep(0.5)  # the compile is under way
        clock = time.pthread_getcpuclockid(ident[0])
        rows = []
        while not done.is_set() and len(rows) < 6:
            before = time.clock_gettime(clock)
            with gate.request():
                took = request(args.forwards)
            try:
                compile_cpu_ms = round((time.clock_gettime(clock) - before) * 1000)
            except OSError:  # the compile finished during this request
                compile_cpu_ms = "compile ended during it"
            rows.append({"x_quiet": round(took / quiet, 2), "compile_thread_cpu_ms": compile_cpu_ms})
            time.sleep(0.2)
        worker.join()
        log(measure="requests while a compile runs", backend=args.backend, yielding=share > 0, quiet_s=round(quiet, 3),
            requests=rows, compile_paused_s=round(gate.paused_s, 2))
    log(measure="quiet request again", x_first_quiet=round(min(request(args.forwards) for _ in range(5)) / quiet, 2))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="aot_eager", choices=("aot_eager", "inductor", "eager"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--forwards", type=int, default=30, help="eager UNet forwards per request")
    parser.add_argument("--compiles", type=int, default=4, help="compiles in a row in the background thread")
    args = parser.parse_args()
    torch.set_num_threads(1)
    hook_cost(args)
    requests_during_compile(args)


if __name__ == "__main__":
    main()
