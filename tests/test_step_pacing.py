"""The step loop's GPU bookkeeping (pipelines/generation.py StepReporter): pacing to
RUN_AHEAD_STEPS and previews that land without a wait. No GPU here, so CUDA's events and the
pinned copy are stand-ins that record what the reporter asks of them; the GPU bench
(bench/gpu_host_syncs.py) measures the real thing."""
from __future__ import annotations

import torch

from pipelines import generation
from pipelines.core.jobs import Job
from pipelines.generation import RUN_AHEAD_STEPS, StepReporter


class OnGpu:
    """Latents as the reporter sees them on a GPU: only their device and first image matter."""

    device = torch.device("cuda")

    def __getitem__(self, index):
        return self


def test_on_a_gpu_the_loop_stays_three_steps_ahead_and_previews_land_without_a_wait(monkeypatch):
    events = []

    class Event:  # torch.cuda.Event: recorded after each step's launch, waited on later
        waited = False

        def record(self, stream=None):
            assert stream == torch.device("cuda")  # the stream of the latents' own GPU
            events.append(self)

        def synchronize(self):
            self.waited = True

    sent = []

    class InFlight:  # PreviewInFlight: the copy lands at the second look
        def __init__(self, latent):
            self.host, self.looks = torch.zeros(4, 8, 8), 0
            sent.append(reporter.steps_done)

        def ready(self):
            self.looks += 1
            return self.looks >= 2

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: device)
    monkeypatch.setattr(generation, "PreviewInFlight", InFlight)
    infos, job = [], Job()
    reporter = StepReporter(job, infos.append, lambda: torch.zeros(5, 3), preview_every=5, batch=0, batch_count=1)
    for index in range(15):
        stop = reporter(index, 15, OnGpu(), None)
        done = index + 1
        # after launching step n the host has waited for steps 1 … n-3: never for the GPU to run dry
        assert [event.waited for event in events] == [step <= done - RUN_AHEAD_STEPS for step in range(1, done + 1)]
        assert not stop
    assert [info.step for info in infos] == list(range(1, 16))
    assert sent == [5, 10]  # every 5th step, and none at the last (the image itself follows)
    assert [info.step for info in infos if info.preview is not None] == [7, 12]  # handed over as they landed
    assert all(info.preview.size == (64, 64) for info in infos if info.preview is not None)
    job.cancel()
    assert reporter(15, 16, OnGpu(), None)  # an interrupt still stops the loop at its next step


def test_on_the_cpu_nothing_is_paced_and_previews_come_at_once():
    infos = []
    reporter = StepReporter(Job(), infos.append, lambda: torch.zeros(5, 3), preview_every=2, batch=0, batch_count=1)
    latents = torch.zeros(1, 4, 8, 8)
    for index in range(5):
        reporter(index, 5, latents, None)
    assert not reporter.queued
    assert [info.step for info in infos if info.preview is not None] == [2, 4, 5]
