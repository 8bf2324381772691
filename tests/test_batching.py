"""Waiting compatible txt2img requests share one UNet batch (pipelines/batching.py), and each
user still gets exactly their own request: image (up to kernel numerics), infotext, progress,
interrupt."""
from __future__ import annotations

import threading
from contextlib import nullcontext

import numpy as np
import pytest

from pipelines.core.jobs import Job
from pipelines.core.requests import Limits, Sampling, Txt2ImgRequest


@pytest.fixture(scope="module")
def batching(tiny_model_dir):
    from pipelines.manager import PipelineManager

    manager = PipelineManager(device="cpu", max_batch=4)
    manager.load_base(str(tiny_model_dir))
    return manager


def txt2img(prompt, seed, cfg_scale=7.0, steps=6, width=64, scheduler="Euler a", negative=""):
    return Limits().normalize(Txt2ImgRequest(prompt=prompt, negative_prompt=negative, width=width, height=64,
                                             sampling=Sampling(scheduler=scheduler, steps=steps, seed=seed,
                                                               cfg_scale=cfg_scale)))


def _until(predicate, seconds=30) -> bool:
    """Poll until predicate() holds; False after `seconds`."""
    for _ in range(int(seconds / 0.02)):
        if predicate():
            return True
        threading.Event().wait(0.02)
    return False


def hold_the_device(manager, gate=None):
    """A request that holds the device until released: it waits inside its first step, in the
    generating thread. With gate, it first takes its turn in that shared line (gate.run's own
    on_step is called by the reader of the job's events, while the generation may already have
    finished, so it could not hold the device)."""
    busy, release = threading.Event(), threading.Event()

    def job():
        with gate.turn() if gate is not None else nullcontext(True) as admitted:
            assert admitted
            manager.run(txt2img("busy", 1, steps=2), on_step=lambda i: (busy.set(), release.wait(60)))

    blocker = threading.Thread(target=job)
    blocker.start()
    assert busy.wait(60)
    return blocker, release


def while_busy(manager, calls, run=None):
    """Run calls [(request, on_step, job)] from threads while the device is busy with another
    request, so they all wait in line together; return their results (or errors) in order."""
    blocker, release = hold_the_device(manager)
    outcomes = [None] * len(calls)

    def call(i, request, on_step, job):
        try:
            outcomes[i] = (run or manager.run)(request, on_step=on_step, job=job)
        except Exception as error:  # noqa: BLE001 — handed back to the test
            outcomes[i] = error

    threads = [threading.Thread(target=call, args=(i, *c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    _until(lambda: manager.batching.waiting == len(calls), 10)
    served_before = len(manager.batching.served)
    release.set()
    for thread in threads + [blocker]:
        thread.join(120)
    return outcomes, manager.batching.served[served_before:]


def pixels(result):
    return np.asarray(result.images[0].image, np.int16)


def test_two_waiting_requests_run_as_one_batch_and_each_gets_its_own_image(batching):
    first = txt2img("a red circle", 11, cfg_scale=7.0)
    second = txt2img("a blue square", 12, cfg_scale=4.5, negative="blurry")
    progress = {0: [], 1: []}
    (one, two), served = while_busy(batching, [(first, lambda i: progress[0].append(i.step), Job()),
                                               (second, lambda i: progress[1].append(i.step), Job())])
    assert served == [2]  # one generation served both
    alone = [batching.run(first), batching.run(second)]
    for together, solo in zip((one, two), alone):
        assert not together.interrupted
        assert together.images[0].seed == solo.images[0].seed
        assert together.images[0].infotext == solo.images[0].infotext  # its own prompt, seed, CFG scale
        assert np.abs(pixels(together) - pixels(solo)).max() <= 2  # same noise, same maths
    assert "a red circle" in one.images[0].infotext and "a blue square" in two.images[0].infotext
    assert "CFG scale: 4.5" in two.images[0].infotext and "Seed: 12" in two.images[0].infotext
    assert progress[0] == progress[1] == list(range(1, 7))  # each user sees their own steps
    assert np.abs(pixels(one) - pixels(two)).mean() > 1  # and they are different images


def test_requests_of_another_size_or_step_count_are_not_batched(batching):
    calls = [(txt2img("a", 1), None, Job()), (txt2img("b", 2, steps=5), None, Job()),
             (txt2img("c", 3, width=72), None, Job())]
    results, served = while_busy(batching, calls)
    assert served == [1, 1, 1]
    assert all(len(r.images) == 1 and not r.interrupted for r in results)


def test_interrupting_one_member_leaves_the_others_image_intact(batching):
    stopped, kept = txt2img("a red circle", 21), txt2img("a blue square", 22)
    job = Job()

    def stop_at_two(info):
        if info.step == 2:
            job.cancel()

    (cut, whole), served = while_busy(batching, [(stopped, stop_at_two, job), (kept, None, Job())])
    assert served == [2]
    assert cut.interrupted and any("Interrupted at step 2/6" in note for note in cut.notes)
    assert len(cut.images) == 1  # its image so far
    assert not whole.interrupted
    assert np.abs(pixels(whole) - pixels(batching.run(kept))).max() <= 2
    # The stopped member's partial image is the one it would have got alone.
    alone_job = Job()
    alone = batching.run(stopped, on_step=lambda i: alone_job.cancel() if i.step == 2 else None, job=alone_job)
    assert np.abs(pixels(cut) - pixels(alone)).max() <= 2


def test_a_member_whose_progress_callback_fails_does_not_stop_the_other(batching):
    def broken(info):
        raise ValueError("client went away")

    (failed, fine), served = while_busy(batching, [(txt2img("x", 31), broken, Job()), (txt2img("y", 32), None, Job())])
    assert served == [2]
    assert isinstance(failed, ValueError)
    assert not fine.interrupted and len(fine.images) == 1


def test_without_batching_the_manager_serves_one_request_per_generation(manager):
    assert manager.max_batch == 1 and manager.concurrency == 1  # CPU default: off


def img2img(prompt, seed, colour, strength=0.6):
    from PIL import Image

    from pipelines.core.requests import Img2ImgRequest

    return Limits().normalize(Img2ImgRequest(prompt=prompt, width=64, height=64, init_image=Image.new("RGB", (80, 64), colour),
                                             strength=strength, sampling=Sampling(scheduler="Euler a", steps=6, seed=seed)))


def test_img2img_requests_with_their_own_init_images_share_a_batch(batching):
    red, blue = img2img("a red circle", 41, "red"), img2img("a blue square", 42, "blue")
    (one, two), served = while_busy(batching, [(red, None, Job()), (blue, None, Job())])
    assert served == [2]
    for together, request in ((one, red), (two, blue)):
        solo = batching.run(request)
        assert together.task == "img2img" and together.images[0].infotext == solo.images[0].infotext
        assert np.abs(pixels(together) - pixels(solo)).max() <= 2
    assert pixels(one)[..., 0].mean() > pixels(two)[..., 0].mean()  # each started from its own image
    # Another denoising strength is another schedule: not batched.
    _, served = while_busy(batching, [(red, None, Job()), (img2img("a", 43, "green", strength=0.8), None, Job())])
    assert served == [1, 1]


def test_a_request_of_several_images_keeps_its_seeds_in_a_batch(batching):
    several = Limits().normalize(Txt2ImgRequest(prompt="dots", width=64, height=64, sampling=Sampling(
        scheduler="Euler a", steps=6, seed=50, batch_size=2)))
    (two, one), served = while_busy(batching, [(several, None, Job()), (txt2img("a line", 60), None, Job())])
    assert served == [2]
    solo = batching.run(several)
    assert [i.seed for i in two.images] == [50, 51] and len(one.images) == 1
    for together, alone in zip(two.images, solo.images):
        assert together.infotext == alone.infotext
        assert np.abs(np.asarray(together.image, np.int16) - np.asarray(alone.image, np.int16)).max() <= 2


def test_requests_from_the_shared_line_reach_the_manager_together(batching):
    """Browser and REST jobs pass FairGate: it lets as many through as one batch holds, so
    requests waiting for a busy device can be batched."""
    from serving.fair import FairGate

    gate = FairGate(batching)
    assert gate.slots == 2 * batching.max_batch == 8  # a batch's worth running, the next one's waiting
    calls = [(txt2img("a", 71), None, Job()), (txt2img("b", 72), None, Job())]
    results, served = while_busy(batching, calls, run=gate.run)
    assert served == [2]
    assert [r.images[0].seed for r in results] == [71, 72]


def test_per_sample_cfg_scale_is_the_scalar_combine_of_each_sample():
    import torch

    from pipelines.batching import PerSampleScale

    scales = PerSampleScale([7.0, 4.5, 7.3])
    assert scales > 1 and float(scales) == 7.3  # diffusers' "is CFG on" test sees a float
    for dtype in (torch.float32, torch.float16):
        diff = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
        combined = scales * diff
        assert combined.dtype == dtype
        for k, s in enumerate((7.0, 4.5, 7.3)):
            assert torch.equal(combined[k], (s * diff[k:k + 1])[0])  # bit for bit the scalar multiply


def test_a_waiter_served_elsewhere_leaves_the_line_without_stalling_it():
    from pipelines.fast_path import FifoLock

    lock, served = FifoLock(), threading.Event()
    lock.acquire()
    first, second = lock.ticket(), lock.ticket()
    outcome = {}
    waiter = threading.Thread(target=lambda: outcome.setdefault("first", lock.wait(first, unless=served.is_set)))
    waiter.start()
    served.set()
    lock.wake()
    waiter.join(10)
    assert outcome == {"first": False}
    lock.release()  # the line skips the abandoned ticket: the second waiter's turn
    got = threading.Thread(target=lambda: outcome.setdefault("second", lock.wait(second)))
    got.start()
    got.join(10)
    assert outcome["second"] is True
    lock.release()


def test_a_model_switch_in_the_shared_line_has_the_device_to_itself(batching):
    """With a batch's worth of slots, a job that loads a model first (the REST API's
    override) still waits for the jobs admitted before it and lets none in beside it."""
    from serving.fair import FairGate

    gate = FairGate(batching)
    order, first_in, release = [], threading.Event(), threading.Event()

    def normal(name, hold=None):
        with gate.turn() as admitted:
            assert admitted
            order.append(f"{name} in")
            if hold is not None:
                first_in.set()
                hold.wait(30)
            order.append(f"{name} out")

    def switch():
        with gate.turn(exclusive=True):
            order.append("switch in")
            threading.Event().wait(0.3)  # time for the next job to try to slip in
            order.append("switch out")

    threads = [threading.Thread(target=normal, args=("first", release))]
    threads[0].start()
    assert first_in.wait(30)
    threads.append(threading.Thread(target=switch))
    threads[1].start()
    while gate.waiting < 1:
        threading.Event().wait(0.01)
    threads.append(threading.Thread(target=normal, args=("after",)))
    threads[2].start()
    while gate.waiting < 2:
        threading.Event().wait(0.01)
    assert order == ["first in"]  # the switch waits for the job already admitted; "after" waits behind it
    release.set()
    for thread in threads:
        thread.join(30)
    assert order == ["first in", "first out", "switch in", "switch out", "after in", "after out"]


def test_a_request_queued_after_a_model_load_never_joins_a_batch_before_it(batching, tiny_model_dir):
    busy, release = threading.Event(), threading.Event()
    blocker = threading.Thread(target=batching.run, args=(txt2img("busy", 1, steps=2),),
                               kwargs={"on_step": lambda i: (busy.set(), release.wait(60))})
    blocker.start()
    assert busy.wait(60)
    results = {}
    before_load = threading.Thread(target=lambda: results.setdefault("before", batching.run(txt2img("a", 81))))
    before_load.start()
    while batching.batching.waiting < 1:
        threading.Event().wait(0.01)
    epoch = batching.batching._epoch
    load = threading.Thread(target=batching.load_base, args=(str(tiny_model_dir),))
    load.start()
    while batching.batching._epoch == epoch:
        threading.Event().wait(0.01)
    after_load = threading.Thread(target=lambda: results.setdefault("after", batching.run(txt2img("b", 82))))
    after_load.start()
    while batching.batching.waiting < 2:
        threading.Event().wait(0.01)
    served = len(batching.batching.served)
    release.set()
    for thread in (blocker, before_load, load, after_load):
        thread.join(120)
    assert batching.batching.served[served:] == [1, 1]  # compatible, but a model load lies between them
    assert set(results) == {"before", "after"}


def test_a_crowd_of_mixed_requests_each_gets_its_own_answer(batching):
    """Twelve users at once: two sizes, a cancelled one, one with a malformed LoRA weight in
    its prompt; nobody waits forever and every result belongs to its request."""
    calls = []
    for i in range(12):
        job = Job()
        if i == 5:
            job.cancel()
        prompt = "<lora:missing-lora:1> x" if i == 7 else f"user {i}"
        calls.append((txt2img(prompt, 100 + i, steps=2, width=64 if i % 3 else 72), None, job))
    results, served = while_busy(batching, calls)
    assert sum(served) == 12 and max(served) <= 4 and max(served) > 1
    for i, outcome in enumerate(results):
        if i == 7:
            assert isinstance(outcome, Exception) and "missing-lora" in str(outcome)  # its own error, nobody else's
        elif i == 5:
            assert outcome.interrupted and outcome.images == []
        else:
            assert [image.seed for image in outcome.images] == [100 + i]
            assert f"user {i}" in outcome.images[0].infotext
            assert outcome.images[0].image.width == (64 if i % 3 else 72)


def test_a_worker_process_takes_a_batch_worth_of_jobs_and_answers_each(tiny_model_dir, batching):
    """--devices … with one worker process per device: a worker whose manager batches runs that
    many jobs side by side (so they can meet in a batch); each answer is its own."""
    from app import manager_kwargs
    from serving.procs import ProcessPool
    from settings import Settings

    settings = Settings.from_args(["--model", str(tiny_model_dir), "--max-batch", "4"])
    pool = ProcessPool(["cpu"], manager_kwargs(settings))
    try:
        pool.load_base(str(tiny_model_dir))
        assert pool.concurrency == 8  # one batch running, the next one's members waiting
        requests = [txt2img(f"user {i}", 200 + i) for i in range(4)]
        results = [None] * 4
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, pool.run(requests[i]))) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        for request, result in zip(requests, results):
            assert result.images[0].seed == request.sampling.seed
            assert np.abs(pixels(result) - pixels(batching.run(request))).max() <= 2
    finally:
        pool.shutdown()


def test_a_crowds_burst_fills_its_batches_and_a_lone_user_never_waits(tiny_model_dir):
    """Once two requests have waited together, a head that finds its batch short holds the
    device for the rest of a burst (Batcher.gather_s): 8 requests at once are served as 4 + 4,
    not 1 + 4 + 3 (the first starting alone before the others are in line). A user whose
    requests never wait together with another's is never held back."""
    from pipelines.manager import PipelineManager

    manager = PipelineManager(device="cpu", max_batch=4)
    manager.load_base(str(tiny_model_dir))
    manager.batching.gather_s = 30.0  # far longer than the burst takes to arrive: the test cannot race it
    lone = threading.Thread(target=manager.run, args=(txt2img("alone", 5, steps=2),))
    lone.start()
    lone.join(20)
    assert not lone.is_alive()  # no crowd yet: it did not wait 30 s for company
    assert manager.batching.served[-1:] == [1]

    manager.batching.gather_s = 0.0  # this pair's short batch would wait out the 30 s
    while_busy(manager, [(txt2img("a", 1), None, Job()), (txt2img("b", 2), None, Job())])  # a crowd
    manager.batching.gather_s = 30.0
    burst = [txt2img(f"burst {i}", 100 + i) for i in range(8)]
    results = [None] * 8
    before = len(manager.batching.served)

    def one(i):
        results[i] = manager.run(burst[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert manager.batching.served[before:] == [4, 4]
    assert [r.images[0].seed for r in results] == [100 + i for i in range(8)]  # each its own
    assert all(f"burst {i}" in results[i].images[0].infotext for i in range(8))


def _rest(jobs):
    """Submit REST API jobs (api/jobs.py: async) from a test thread: an event loop of their own."""
    import asyncio

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    return lambda request, caller: asyncio.run_coroutine_threadsafe(jobs.run(request, caller), loop)


def test_rest_api_jobs_take_ordinary_turns_and_batch_together(batching):
    """Only a REST job that switches the model first takes the line's exclusive turn: ordinary
    ones are let in side by side, as browser jobs are, so they wait in the manager's line
    together and are sampled as one batch (with every REST job exclusive, API clients could
    never batch, nor use a second GPU's slots)."""
    from api.jobs import ApiJobs
    from serving.fair import FairGate

    gate = FairGate(batching)
    submit = _rest(ApiJobs(gate, max_jobs=16))
    blocker, release = hold_the_device(batching, gate)
    futures = [submit(txt2img(f"api {i}", 40 + i), "alice") for i in range(2)]
    assert _until(lambda: batching.batching.waiting == 2)  # both admitted beside the running job
    served = len(batching.batching.served)
    release.set()
    results = [future.result(120) for future in futures]
    blocker.join(60)
    assert batching.batching.served[served:] == [2]  # one generation for both
    assert [r.images[0].seed for r in results] == [40, 41] and not any(r.interrupted for r in results)


def test_rest_interrupt_stops_the_callers_job_being_sampled_not_the_ones_waiting(batching):
    """As A1111's /sdapi/v1/interrupt: the job being sampled stops with its image so far; the
    caller's next job, admitted but still waiting for the device, runs after it."""
    from api.jobs import ApiJobs
    from serving.fair import FairGate

    gate = FairGate(batching)
    jobs = ApiJobs(gate, max_jobs=16)
    submit = _rest(jobs)
    first = submit(txt2img("long", 50, steps=150), "alice")
    assert _until(lambda: getattr(jobs.progress("alice")[0], "step", None) is not None)  # sampling
    second = submit(txt2img("next", 51, width=72), "alice")  # another size: it waits, unbatched
    assert _until(lambda: batching.batching.waiting == 1)
    assert jobs.interrupt("alice") == 1
    stopped, after = first.result(120), second.result(120)
    assert stopped.interrupted and stopped.images  # its image so far
    assert not after.interrupted and [i.seed for i in after.images] == [51]
