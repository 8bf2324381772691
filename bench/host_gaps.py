"""What the host was doing while the GPU sat idle inside one request.

`profile_host_gaps(fn)` runs fn once under torch's profiler with Python stacks, then, for each
of the widest gaps between the GPU's kernels and copies, looks at the host thread that
launched the work after the gap: the CUDA runtime calls it made and the Python frames it was
in between the moment the GPU ran dry and that launch (sampled every 0.1 ms). The GPU waits
there for the host, so those frames are the host overhead worth removing.

The Python tracer slows the host, so gaps come out wider than in an unprofiled request; which
frames fill them is what this answers. With keep_trace and $OUT set, the raw Kineto trace is
written there too (gzip; `python bench/host_gaps.py FILE` reads one back).
"""
from __future__ import annotations

import gzip
import json
import os
import tempfile
from collections import Counter
from pathlib import Path

GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
OURS = ("pipelines/", "diffusers/", "bench/", "torch/")


def _short(frame: str) -> str:
    """'/x/site-packages/diffusers/pipelines/foo.py(12): bar' -> 'diffusers/pipelines/foo.py(12): bar'."""
    for root in ("site-packages/", "/work/", "/repo/"):
        if root in frame:
            frame = frame.split(root, 1)[1]
    return frame[-110:]


def _stacks_at(pyevents: list, t: float) -> list[str]:
    """The Python frames open at host time t, outermost first (events sorted by start)."""
    return [e["name"] for e in pyevents if e["ts"] <= t < e["ts"] + e.get("dur", 0)]


def analyse(trace: dict, widest: int = 6, min_gap_us: float = 300) -> dict:
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    gpu = sorted((e for e in events if e.get("cat") in GPU_CATS and e.get("ph") == "X"), key=lambda e: e["ts"])
    if not gpu:
        return {"gaps": [], "note": "no GPU events"}
    runtime = {e["args"].get("correlation"): e for e in events
               if e.get("cat") in ("cuda_runtime", "cuda_driver") and "args" in e}
    runtime_calls = sorted((e for e in events if e.get("cat") in ("cuda_runtime", "cuda_driver")), key=lambda e: e["ts"])
    python = sorted((e for e in events if e.get("cat") == "python_function" and e.get("ph") == "X"),
                    key=lambda e: e["ts"])
    gaps, reach = [], gpu[0]["ts"] + gpu[0].get("dur", 0)
    for prev, event in zip(gpu, gpu[1:]):
        if event["ts"] - reach >= min_gap_us:
            gaps.append((event["ts"] - reach, reach, prev, event))
        reach = max(reach, event["ts"] + event.get("dur", 0))
    gaps.sort(key=lambda g: -g[0])
    out = []
    for width, dry, prev, event in gaps[:widest]:
        launch = runtime.get(event.get("args", {}).get("correlation"))
        entry = {"ms": round(width / 1000, 2), "at_ms": round((dry - gpu[0]["ts"]) / 1000, 1),
                 "after": prev["name"][:50], "before": event["name"][:50]}
        if launch is not None:
            host_end, tid = launch["ts"], launch.get("tid")
            calls = [(c["name"], round(c.get("dur", 0) / 1000, 2)) for c in runtime_calls
                     if dry <= c["ts"] <= host_end and c.get("tid") == tid and c.get("dur", 0) >= 50]
            mine = [e for e in python if e.get("tid") == tid and e["ts"] < host_end and e["ts"] + e.get("dur", 0) > dry]
            samples = Counter()
            t = max(dry, launch["ts"] - width)
            while t < host_end:
                stack = [_short(f) for f in _stacks_at(mine, t)]
                ours = [f for f in stack if f.startswith(OURS)][-3:]
                leaf = stack[-1:] if stack and not stack[-1].startswith(OURS) else []  # a builtin, e.g. .item()
                samples[" <- ".join(reversed(ours + leaf)) or "(no Python frame)"] += 1
                t += 100
            total = sum(samples.values()) or 1
            entry.update(launch=launch["name"], launch_ms=round(launch.get("dur", 0) / 1000, 2),
                         host_from_dry_ms=round((host_end - dry) / 1000, 2), runtime_calls=calls[:8],
                         frames=[(round(n / total, 2), s) for s, n in samples.most_common(5)])
        out.append(entry)
    return {"gaps": out, "gpu_events": len(gpu), "python_events": len(python)}


def profile_host_gaps(fn, keep_trace: str | None = None) -> dict:
    """fn once (after a warm call) under the profiler with stacks; analyse()'s answer."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True) as prof:
        fn()
        torch.cuda.synchronize()
    path = Path(tempfile.mkdtemp()) / "trace.json"
    prof.export_chrome_trace(str(path))
    trace = json.loads(path.read_text())
    if keep_trace and os.environ.get("OUT"):
        with gzip.open(Path(os.environ["OUT"], f"{keep_trace}.trace.json.gz"), "wt") as f:
            json.dump(trace, f)
    return analyse(trace)


if __name__ == "__main__":  # analyse a saved trace: python bench/host_gaps.py trace.json.gz
    import sys

    opener = gzip.open if sys.argv[1].endswith(".gz") else open
    with opener(sys.argv[1], "rt") as f:
        print(json.dumps(analyse(json.load(f)), indent=1))
