"""Several devices, one worker process each (`--devices cpu,cpu` here; `--devices all` on a
GPU host): the app's backend spreads jobs over the processes, results and progress cross
the process boundary unchanged, Interrupt and Skip reach the right worker, and a worker
that dies costs its job a sentence, not the server."""
from __future__ import annotations

import os
import pickle
import signal
import threading
import time

import numpy as np
import pytest

from app import create_backend
from pipelines.core.backend import Backend
from pipelines.core.errors import GenerationError, ModelLoadError
from pipelines.core.jobs import GenerationResult, Job, StepInfo
from pipelines.core.lab_requests import LabForwardRequest
from pipelines.core.requests import Img2ImgRequest, Limits, Sampling, Txt2ImgRequest
from serving.procs import ProcessPool
from settings import Settings


def txt2img(steps=4, seed=1, batch_count=1, prompt="a red circle"):
    return Limits().normalize(Txt2ImgRequest(prompt=prompt, width=64, height=64,
                                             sampling=Sampling(steps=steps, seed=seed, batch_count=batch_count)))


@pytest.fixture(scope="module")
def pool(tiny_model_dir):
    """What app.py builds for `--devices cpu,cpu`: two worker processes with the model loaded."""
    settings = Settings.from_args(["--model", str(tiny_model_dir), "--devices", "cpu,cpu", "--no-save-outputs"])
    backend, message = create_backend(settings)
    assert message == ""
    yield backend
    backend.shutdown()


def in_threads(*calls):
    """Run the calls at once; their return values (or exceptions) in order."""
    outcomes = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def one(i, call):
        start.wait()
        try:
            outcomes[i] = call()
        except Exception as error:  # noqa: BLE001 — returned for the test to look at
            outcomes[i] = error

    threads = [threading.Thread(target=one, args=(i, c)) for i, c in enumerate(calls)]
    [t.start() for t in threads]
    [t.join(300) for t in threads]
    return outcomes


def _visible_gpus(answers) -> None:
    answers.put(os.environ.get("CUDA_VISIBLE_DEVICES"))


@pytest.mark.parametrize("parent_sees, child_sees", [(None, "1"), ("4,6", "6")])
def test_a_gpu_worker_is_born_seeing_only_its_own_gpu(monkeypatch, parent_sees, child_sees):
    """cuda:1 → the second GPU this process sees, set before the child runs any import."""
    import multiprocessing

    from serving.procs import _only_gpu

    if parent_sees is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", parent_sees)
    context = multiprocessing.get_context("spawn")
    answers = context.Queue()
    with _only_gpu("cuda:1"):
        child = context.Process(target=_visible_gpus, args=(answers,))
        child.start()
    assert answers.get(timeout=120) == child_sees
    child.join(30)
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == parent_sees  # this process keeps its own view


def test_requests_and_results_survive_pickling(tiny_model_dir):
    from PIL import Image

    request = Limits().normalize(Img2ImgRequest(prompt="x", width=64, height=64, init_image=Image.new("RGB", (64, 64), "red"),
                                                sampling=Sampling(steps=2, seed=3)))
    again = pickle.loads(pickle.dumps(request))
    assert again == request and again.is_normalized and again.init_image.tobytes() == request.init_image.tobytes()


def test_two_devices_start_two_worker_processes_and_concurrent_jobs_run_in_both(pool):
    assert isinstance(pool, ProcessPool) and isinstance(pool, Backend)
    assert pool.concurrency == 2
    pids = pool.worker_pids()
    assert len(set(pids)) == 2 and os.getpid() not in pids
    first, second = in_threads(lambda: pool.run(txt2img(steps=20, seed=1)), lambda: pool.run(txt2img(steps=20, seed=2)))
    workers = {first.worker.split(":")[-2], second.worker.split(":")[-2]}  # host:pid:device
    assert workers == {str(p) for p in pids}
    assert "2 worker processes, one per device: cpu, cpu" in pool.describe()


def test_a_worker_process_makes_the_same_image_as_the_manager_in_this_process(pool, manager):
    import torch

    request = txt2img(steps=5, seed=1234)
    remote = pool.run(request)
    # CPU workers split the host's cores (serving/placement.py); a CPU's sums depend on how many
    # threads share them, so the manager here runs with a worker's thread count.
    threads, before = pool.worker_stats()[0]["threads"], torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        local = manager.run(request)
    finally:
        torch.set_num_threads(before)
    assert remote.images[0].infotext == local.images[0].infotext
    assert np.array_equal(np.asarray(remote.images[0].image), np.asarray(local.images[0].image))


def test_progress_and_previews_stream_back_from_the_worker(pool):
    events = list(pool.stream(txt2img(steps=6, seed=5)))
    steps, result = events[:-1], events[-1]
    assert [e.step for e in steps] == list(range(1, 7)) and all(isinstance(e, StepInfo) for e in steps)
    assert all(e.preview is not None and e.preview.size == (64, 64) for e in steps)  # every step on CPU
    assert isinstance(result, GenerationResult) and len(result.images) == 1


def test_a_caller_without_a_progress_callback_gets_the_same_image_and_no_steps_cross(pool):
    request = txt2img(steps=5, seed=77)
    events = list(pool._events(request, None, steps=False))  # what run(request) reads
    assert len(events) == 1 and isinstance(events[0], GenerationResult)
    seen = []
    streamed = pool.run(request, on_step=seen.append)  # a progress callback still gets every step
    assert [s.step for s in seen] == list(range(1, 6)) and all(s.preview is not None for s in seen)
    assert np.array_equal(np.asarray(events[0].images[0].image), np.asarray(streamed.images[0].image))
    assert events[0].images[0].infotext == streamed.images[0].infotext


def test_interrupt_reaches_a_job_run_without_a_progress_callback(pool):
    job, outcome = Job(), []
    thread = threading.Thread(target=lambda: outcome.append(pool.run(txt2img(steps=100, seed=13, batch_count=4), job=job)))
    thread.start()
    deadline = time.monotonic() + 120
    while not any(s and s["running"] for s in pool.worker_stats()) and time.monotonic() < deadline:
        time.sleep(0.05)
    job.cancel()
    thread.join(120)
    assert outcome and outcome[0].interrupted and len(outcome[0].images) < 4


def test_each_cpu_worker_is_pinned_to_its_own_share_of_this_hosts_cpus(pool):
    """Several workers on one host split the CPUs (whole cores) and size torch's threads to their share."""
    from serving import placement

    host = sorted(os.sched_getaffinity(0))
    expected = placement.plan([host, host])
    stats = pool.worker_stats()
    for share, pid, stat in zip(expected, pool.worker_pids(), stats):
        assert sorted(os.sched_getaffinity(pid)) == stat["cpus"] == sorted(share.cpus)
        assert stat["threads"] == share.threads
    if len(host) >= 2:
        assert not set(stats[0]["cpus"]) & set(stats[1]["cpus"])  # disjoint: no two pools on one core
    assert sorted(os.sched_getaffinity(0)) == host  # the front end itself stays where it was


def test_a_batching_worker_serves_concurrent_requests_in_full_batches(tiny_model_dir):
    """With --max-batch 4 the worker lets a whole next batch wait while one samples, so 8 requests
    arriving together run as the manager in one process would run them: one alone (it found the
    line empty), then batches of 4 and 3 (not 1, 3, 2, 2 as jobs trickled in one by one)."""
    batching = ProcessPool(["cpu"], {"max_batch": 4})
    try:
        batching.load_base(str(tiny_model_dir))
        results = in_threads(*[lambda seed=seed: batching.run(txt2img(steps=12, seed=seed)) for seed in range(8)])
        assert all(isinstance(r, GenerationResult) and len(r.images) == 1 for r in results)
        served = batching.worker_stats()[0]["batches"]
        assert sum(served) == 8 and max(served) == 4 and len(served) <= 3, served
    finally:
        batching.shutdown()


def test_interrupt_and_skip_reach_only_the_job_they_belong_to(pool):
    stopped, untouched, skipped = Job(), Job(), Job()

    def run(job, request, act_at_step=None, act=None):
        steps = []
        for event in pool.stream(request, job):
            if isinstance(event, StepInfo):
                steps.append((event.batch, event.step))
                if act and len(steps) == act_at_step:
                    act(job)
            else:
                return event, steps

    long = txt2img(steps=60, seed=7)
    (cut, cut_steps), (whole, whole_steps) = in_threads(lambda: run(stopped, long, 3, Job.cancel),
                                                        lambda: run(untouched, long))
    assert cut.interrupted and len(cut_steps) < 60
    assert not whole.interrupted and len(whole_steps) == 60 and len(whole.images) == 1
    assert cut.worker != whole.worker  # two jobs at once: one per process
    # Skip ends the batch being sampled and goes on with the next (A1111's Skip)
    result, steps = run(skipped, txt2img(steps=60, seed=8, batch_count=2), 3, Job.skip)
    assert not result.interrupted and len(result.images) == 2
    assert len([s for s in steps if s[0] == 0]) < 60 and len([s for s in steps if s[0] == 1]) == 60


def test_the_workers_answer_what_the_ui_reads(pool):
    assert pool.model.name == "tiny-sd" and pool.native_size == 64 and pool.train_steps == 1000
    assert pool.family_name == "SD" and pool.memory_report()["base_bytes"] > 0
    tokens, limit = pool.count_tokens("a red circle")
    assert 0 < tokens < limit
    view = pool.run(LabForwardRequest(None, 250, 2))  # a Diffusion-lab job runs on a worker too
    assert view.t == 250 and view.latent_decoded.size == (64, 64)


def test_a_model_that_cannot_load_is_a_sentence_and_every_worker_keeps_its_model(pool, tmp_path):
    with pytest.raises(ModelLoadError) as caught:
        pool.load_base(str(tmp_path / "no-such-model"))
    assert "Traceback" not in str(caught.value) and "Error" not in str(caught.value).split()[0]
    results = in_threads(lambda: pool.run(txt2img(seed=3)), lambda: pool.run(txt2img(seed=4)))
    assert all(isinstance(r, GenerationResult) and len(r.images) == 1 for r in results)
    assert pool.model.name == "tiny-sd"


def test_a_killed_worker_fails_its_job_with_a_sentence_and_the_pool_keeps_serving(pool):
    """Last in this file: it costs a restart."""
    victim = pool.worker_pids()[0]  # both idle: the first worker takes the next job
    job, seen = Job(), threading.Event()

    def doomed():
        for event in pool.stream(txt2img(steps=400, seed=9), job):
            if isinstance(event, StepInfo) and not seen.is_set():
                seen.set()

    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(pytest.raises(GenerationError, doomed)))
    thread.start()
    assert seen.wait(120)
    os.kill(victim, signal.SIGKILL)
    thread.join(60)
    message = str(outcome[0].value)
    assert "stopped unexpectedly" in message and "try again" in message
    assert str(victim) not in message and "/" not in message  # no PID, no path
    # the other worker serves meanwhile
    assert len(pool.run(txt2img(seed=10)).images) == 1
    # and the dead one comes back with the model loaded
    deadline = time.monotonic() + 180
    while pool.worker_pids()[0] in (None, victim) and time.monotonic() < deadline:
        time.sleep(0.5)
    fresh = pool.worker_pids()[0]
    assert fresh not in (None, victim)
    survivor = pool.worker_stats()[1]
    assert pool.worker_stats()[0]["cpus"] == sorted(os.sched_getaffinity(fresh))  # placed again, as before
    assert not set(pool.worker_stats()[0]["cpus"]) & set(survivor["cpus"]) or len(os.sched_getaffinity(0)) < 2
    results = in_threads(lambda: pool.run(txt2img(steps=20, seed=11)), lambda: pool.run(txt2img(steps=20, seed=12)))
    assert {r.worker.split(":")[-2] for r in results} == {str(p) for p in pool.worker_pids()}


@pytest.mark.slow
def test_the_app_with_two_devices_serves_two_browser_users_from_two_worker_processes(tiny_model_dir, tmp_path):
    from gradio_client import Client

    from conftest import AppServer

    server = AppServer(["--model", str(tiny_model_dir), "--devices", "cpu,cpu", "--no-save-outputs"],
                       log_path=tmp_path / "app.log")
    try:
        server.wait_ready(timeout=180)
        clients = [Client(server.url, verbose=False) for _ in range(2)]
        jobs = [c.submit(f"request {i}", "", "Euler", 30, True, 7, 0, i, 1, 1, 64, 64, api_name="/txt2img")
                for i, c in enumerate(clients)]
        results = [job.result(timeout=180) for job in jobs]
        for i, (_, gallery, notes, infotext) in enumerate(results):
            assert len(gallery) == 1 and infotext.startswith(f"request {i}\n")
        workers = {notes.split(" on ")[1].split("\n")[0].split(" —")[0] for _, _, notes, _ in results}
        assert workers == {"worker 1", "worker 2"}, workers
    finally:
        server.stop()
