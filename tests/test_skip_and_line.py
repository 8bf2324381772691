"""Skip (A1111's: end the batch being sampled, go on with the next) and the one
first-come-first-served line that browser and REST API jobs share (serving/fair.py)."""
from __future__ import annotations

import threading
import time

import numpy as np

from pipelines.core.jobs import GenerationResult, Job
from pipelines.core.requests import Limits, Sampling, Txt2ImgRequest
from serving.fair import FairGate


def request(steps=8, batch_count=2, seed=7):
    return Limits().normalize(Txt2ImgRequest(prompt="a red circle", width=64, height=64, sampling=Sampling(
        scheduler="Euler", steps=steps, seed=seed, batch_count=batch_count)))


def test_skip_ends_the_current_batch_and_the_next_batch_runs_in_full(manager):
    job = Job()

    def on_step(info):
        if info.batch == 0 and info.step == 2:
            job.skip()

    skipped = manager.run(request(), on_step=on_step, job=job)
    full = manager.run(request())
    assert len(skipped.images) == 2 and not skipped.interrupted
    assert any("Skipped at step 2/8 of batch 1" in note for note in skipped.notes)
    first = [np.asarray(result.images[0].image, np.int16) for result in (skipped, full)]
    assert np.abs(first[0] - first[1]).mean() > 1  # the first image stopped early: it differs
    # The second batch ran all its steps from its own seed: the same pixels as without a skip.
    assert np.array_equal(np.asarray(skipped.images[1].image), np.asarray(full.images[1].image))
    assert skipped.images[1].seed == full.images[1].seed == 8


def test_a_skip_between_batches_does_not_cut_the_next_batch(manager):
    job = Job()
    job.skip()  # before anything runs: A1111 drops it at the start of the batch
    result = manager.run(request(batch_count=1), job=job)
    assert not any("Skipped" in note for note in result.notes)
    assert np.array_equal(np.asarray(result.images[0].image), np.asarray(manager.run(request(batch_count=1)).images[0].image))


class HeldBackend:
    """A backend whose jobs run until released, recording the order they started in."""

    def __init__(self):
        self.started, self.release = [], threading.Event()

    def stream(self, request, job):
        self.started.append(request)
        self.release.wait(10)
        yield GenerationResult("txt2img", [], [])


def test_the_line_admits_jobs_in_arrival_order_one_at_a_time():
    backend = HeldBackend()
    gate = FairGate(backend)
    threads = []
    for name in ("browser-1", "api-1", "api-2", "browser-2"):
        thread = threading.Thread(target=lambda n=name: list(gate.stream(n)))
        thread.start()
        threads.append(thread)
        deadline = time.time() + 5  # the next one arrives once this one is running or in line
        while len(backend.started) + gate.waiting < len(threads) and time.time() < deadline:
            time.sleep(0.01)
    assert backend.started == ["browser-1"] and gate.waiting == 3
    backend.release.set()
    for thread in threads:
        thread.join(10)
    assert backend.started == ["browser-1", "api-1", "api-2", "browser-2"]


def test_a_job_interrupted_while_waiting_never_reaches_the_backend():
    backend = HeldBackend()
    gate = FairGate(backend)
    first = threading.Thread(target=lambda: list(gate.stream("first")))
    first.start()
    while not backend.started:
        time.sleep(0.01)
    job = Job()
    job.cancel()
    events = list(gate.stream(request(batch_count=1), job))
    assert events[-1].interrupted and events[-1].images == [] and backend.started == ["first"]
    backend.release.set()
    first.join(10)
