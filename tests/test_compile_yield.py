"""The background compile steps aside while requests run (pipelines/compile_yield.py), on the
tiny model (CPU). The fake compile does real Python work in the worker thread, allocating as
dynamo's tracing does (the collector's callback is the checkpoint that arms the pause), and
counts its iterations. Everything is ordered by events and handshakes, never by timing."""
from __future__ import annotations

import threading

import numpy as np

from pipelines.core.requests import Limits, Sampling, Txt2ImgRequest
from pipelines.fast_path import FastPath
from pipelines.manager import PipelineManager

SIZE = 64
WAIT = 120  # seconds a handshake may take on a loaded machine before the test calls it a hang


def txt2img(seed=3, steps=4) -> Txt2ImgRequest:
    return Limits().normalize(Txt2ImgRequest(prompt="a red circle", width=SIZE, height=SIZE,
                                             sampling=Sampling(scheduler="Euler", steps=steps, seed=seed)))


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image, dtype=np.int16)


GRAPH: list = []


def trace_like_work() -> int:
    """A slice of 'tracing': small Python calls building a graph of containers that outlive
    the call (net allocations are what make the collector run, as dynamo's do)."""
    GRAPH.extend([{"op": i, "args": [GRAPH[-1] if GRAPH else None, str(i)]} for i in range(50)])
    if len(GRAPH) > 20_000:
        GRAPH.clear()
    return len(GRAPH)


class LoopCompiler:
    """fn -> the same fn; the first run of each (the 'compile') loops over trace_like_work until
    `finish` is set, counting iterations, optionally holding `resource` meanwhile."""

    def __init__(self, hold: bool = False):
        self.iterations = 0
        self.hold = hold
        self.resource = threading.Lock()
        self.started, self.finish, self.compiled = threading.Event(), threading.Event(), threading.Event()
        self.progressed = threading.Event()  # set at every iteration

    def _compile(self):
        self.started.set()
        while not self.finish.is_set():
            trace_like_work()
            self.iterations += 1
            self.progressed.set()

    def __call__(self, fn):
        first = [True]

        def compiled(*args):
            if first[0]:
                first[0] = False
                if self.hold:
                    with self.resource:
                        self._compile()
                else:
                    self._compile()
                out = fn(*args)
                self.compiled.set()
                return out
            return fn(*args)

        return compiled

    def wait_progress(self) -> bool:
        self.progressed.clear()
        return self.progressed.wait(WAIT)


def fast_manager(model_dir, compiler, **config) -> PipelineManager:
    m = PipelineManager(device="cpu", fast_path=FastPath(compile="full", channels_last=False, fuse_qkv=False,
                                                         compiler=compiler, **config))
    m.load_base(str(model_dir))
    return m


def wait_paused(gate) -> bool:
    """Until the compile thread is inside a pause (it notices a request at its next collection)."""
    tick = threading.Event()
    for _ in range(WAIT * 100):  # a bound against hanging, not a speed check
        if gate.paused:
            return True
        tick.wait(0.01)
    return False


def test_the_background_compile_makes_no_progress_while_a_request_runs(tiny_model_dir):
    # A burst of credit far beyond this test: only the pause itself is under test here.
    compiler = LoopCompiler()
    m = fast_manager(tiny_model_dir, compiler, yield_burst_s=3600)
    gate = m.fast_runtime.gate
    first = m.run(txt2img())  # its second UNet call hands the UNet to the worker
    assert compiler.started.wait(WAIT)
    assert compiler.wait_progress()  # between requests the compile runs
    seen = {}

    def on_step(info):
        if info.step == 1:
            assert wait_paused(gate)
            seen["at start"] = compiler.iterations
            compiler.progressed.clear()
            # The request blocks here, GIL released: a compile that did not step aside would run now.
            seen["progressed meanwhile"] = compiler.progressed.wait(1.0)
        if info.step == info.total:
            seen["at end"] = compiler.iterations

    second = m.run(txt2img(), on_step=on_step)
    assert seen["at end"] == seen["at start"] and not seen["progressed meanwhile"]
    assert compiler.wait_progress()  # and it resumes once the request is over
    compiler.finish.set()
    assert m.fast_runtime.wait_idle(WAIT)
    third = m.run(txt2img())
    assert m.pipeline("txt2img").unet._sd_studio_fast.served["compiled"] == 4  # the upgrade went in, between requests
    assert np.array_equal(pixels(first), pixels(second)) and np.array_equal(pixels(first), pixels(third))


def test_a_compile_paused_by_requests_back_to_back_still_finishes(tiny_model_dir):
    """Requests without a gap between them (the outer serving() keeps one counted all along):
    the pause share cap still gives the compile its turn."""
    compiler = LoopCompiler()
    m = fast_manager(tiny_model_dir, compiler, yield_burst_s=0.1)
    runtime = m.fast_runtime
    m.run(txt2img())
    assert compiler.started.wait(WAIT)
    with runtime.serving():
        assert wait_paused(runtime.gate)  # from here on a request is in progress until the end
        compiler.finish.set()  # what is left of the compile can only run in its share of the time
        served = 0
        while not compiler.compiled.is_set() and served < 2000:
            m.run(txt2img(steps=2))
            served += 1
        assert compiler.compiled.is_set()
        assert runtime.gate.running == 1  # the outer one: the compile finished inside a request
    assert runtime.wait_idle(WAIT)
    assert runtime.gate.paused_total() > 0


def test_a_request_waiting_for_a_lock_the_paused_compile_holds_still_completes(tiny_model_dir, manager):
    compiler = LoopCompiler(hold=True)
    m = fast_manager(tiny_model_dir, compiler, yield_burst_s=0.1)
    m.run(txt2img())
    assert compiler.started.wait(WAIT)  # the compile holds compiler.resource from here on
    got = []

    def on_step(info):
        if info.step == 1:
            assert wait_paused(m.fast_runtime.gate)  # paused, holding the lock
            compiler.finish.set()
            got.append(compiler.resource.acquire(timeout=WAIT))  # a deadlock would end here, False
            compiler.resource.release()

    result = m.run(txt2img(), on_step=on_step)
    assert got == [True]
    assert np.array_equal(pixels(result), pixels(manager.run(txt2img())))  # the plain manager's image
    assert m.fast_runtime.wait_idle(WAIT)


def test_images_are_the_same_with_and_without_the_compile_yielding(tiny_model_dir):
    results = {}
    for share in (0.75, 0.0):
        compiler = LoopCompiler()
        m = fast_manager(tiny_model_dir, compiler, yield_share=share, yield_burst_s=3600)
        images = [pixels(m.run(txt2img(seed=seed))) for seed in (3, 4)]  # the compile starts in the first
        assert compiler.started.wait(WAIT)

        def on_step(info, gate=m.fast_runtime.gate):
            if info.step == 1 and share > 0:
                assert wait_paused(gate)

        images.append(pixels(m.run(txt2img(seed=5), on_step=on_step)))  # while the compile is under way
        compiler.finish.set()
        assert m.fast_runtime.wait_idle(WAIT)
        images.append(pixels(m.run(txt2img(seed=5))))  # compiled
        results[share] = (images, m.fast_runtime.gate.paused_total())
    (yielding, paused), (plain, never) = results[0.75], results[0.0]
    assert paused > 0 and never == 0
    assert all(np.array_equal(a, b) for a, b in zip(yielding, plain))
    assert np.array_equal(yielding[2], yielding[3])


def compile_like_thread(gate, stop: threading.Event) -> threading.Thread:
    def run():
        with gate.yielding():
            while not stop.is_set():
                trace_like_work()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    return worker


def test_a_compile_steps_aside_for_another_managers_request_too():
    """One GIL per process: in a pool of managers (one per device, one process) a compile
    pauses for any manager's request, not only its own runtime's."""
    from pipelines.compile_yield import CompileGate

    compiling, other, stop = CompileGate(burst_s=3600), CompileGate(), threading.Event()
    worker = compile_like_thread(compiling, stop)
    try:
        with other.request():
            assert wait_paused(compiling)
    finally:
        stop.set()
        worker.join(WAIT)


def test_a_paused_compile_leaves_garbage_collection_to_the_request():
    """The pause is armed from the collector's callback but taken outside it: paused inside,
    it would block every thread's collections (even gc.collect(), which the manager's
    out-of-memory recovery calls)."""
    import gc
    import weakref

    from pipelines.compile_yield import CompileGate

    gate, stop = CompileGate(burst_s=3600), threading.Event()
    worker = compile_like_thread(gate, stop)
    try:
        with gate.request():
            assert wait_paused(gate)

            class Node:
                pass

            cycle = Node()
            cycle.itself = cycle
            alive = weakref.ref(cycle)
            del cycle
            gc.collect()
            assert alive() is None
    finally:
        stop.set()
        worker.join(WAIT)
