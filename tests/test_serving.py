"""Hosting: the Space configuration, a Space-like environment, many users on one server,
several devices in one host, ZeroGPU booking, and Ray Serve workers."""
from __future__ import annotations

import inspect
import threading
import time

import gradio
import numpy as np
import pytest
import yaml
from gradio_client import Client
from gradio_client.exceptions import AppError

from conftest import ROOT, AppServer
from pipelines.manager import PipelineManager
from pipelines.core.requests import Limits, Sampling, Txt2ImgRequest
from serving.pool import ManagerPool
from serving.fair import FairGate
from pipelines.core.backend import Backend, backend_members
from pipelines.core.lab_requests import LabForwardRequest, LabSchedulesRequest
from serving.zerogpu import ZeroGPUBackend, gpu_seconds


def t2i(prompt="a red circle", steps=4, seed=1, width=64, height=64):
    return [prompt, "", "Euler", steps, True, 7, 0, seed, 1, 1, width, height]


def front_matter() -> dict:
    return yaml.safe_load((ROOT / "README.md").read_text().split("---")[1])


def test_readme_front_matter_is_a_complete_gradio_space():
    meta = front_matter()
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert meta["sdk_version"] == gradio.__version__  # the version the tests ran against
    assert meta["python_version"] == "3.11"
    assert len(meta["short_description"]) <= 60 and meta["license"] and meta["suggested_hardware"]
    preloaded = {entry.split()[0] for entry in meta["preload_from_hub"]}
    assert preloaded == {"stable-diffusion-v1-5/stable-diffusion-v1-5", "stable-diffusion-v1-5/stable-diffusion-inpainting",
                         "lllyasviel/control_v11p_sd15_canny", "lllyasviel/control_v11p_sd15_openpose"}
    assert all("fp16" in entry for entry in meta["preload_from_hub"])  # the app loads them with --variant fp16


def test_a_space_like_environment_applies_the_public_host_settings(tiny_model_dir, tmp_path):
    outputs = tmp_path / "outputs"
    env = {"SPACE_ID": "someone/sd-studio", "SD_STUDIO_MODEL": str(tiny_model_dir), "SD_STUDIO_MAX_SIZE": "512",
           "SD_STUDIO_OUTPUTS_DIR": str(outputs)}
    server = AppServer([], env=env, log_path=tmp_path / "app.log")
    try:
        server.wait_ready()
        client = Client(server.url, verbose=False)
        width = next(c for c in client.config["components"] if c.get("props", {}).get("elem_id") == "txt2img_width")
        assert width["props"]["maximum"] == 512
        steps = next(c for c in client.config["components"] if c.get("props", {}).get("elem_id") == "txt2img_steps")
        assert steps["props"]["maximum"] == 50  # a Space's default step limit
        notes = client.predict(*t2i(), api_name="/txt2img")[2]
        assert "Saved to" not in notes and not outputs.exists()  # nothing saved on a public Space
        with pytest.raises(AppError, match="does not allow changing models"):
            client.predict(str(tiny_model_dir), api_name="/load_model")
    finally:
        server.stop()


def test_two_users_at_once_each_get_only_their_own_results(app_server):
    alice, bob = Client(app_server.url, verbose=False), Client(app_server.url, verbose=False)
    jobs = {name: client.submit(*t2i(prompt=f"a picture for {name}", steps=12), api_name="/txt2img")
            for name, client in (("alice", alice), ("bob", bob))}
    for name, job in jobs.items():
        infotext = job.result(timeout=120)[3]
        assert infotext.startswith(f"a picture for {name}\n")


def test_a_full_queue_says_so(tiny_model_dir, tmp_path):
    server = AppServer(["--model", str(tiny_model_dir), "--queue-size", "1", "--no-save-outputs"], log_path=tmp_path / "app.log")
    try:
        server.wait_ready()
        clients = [Client(server.url, verbose=False) for _ in range(4)]
        jobs = [c.submit(*t2i(steps=150), api_name="/txt2img") for c in clients]
        outcomes = []
        for job in jobs:
            try:
                job.result(timeout=300)
                outcomes.append("ok")
            except Exception as error:  # gradio_client raises on a queue_full event
                outcomes.append(str(error))
        assert outcomes.count("ok") >= 1
        assert any("Queue is full" in o for o in outcomes), outcomes
    finally:
        server.stop()


def test_a_pool_spreads_concurrent_jobs_over_its_devices(tiny_model_dir):
    managers = [PipelineManager(device="cpu") for _ in range(2)]
    pool = ManagerPool(managers)
    pool.load_base(str(tiny_model_dir))
    assert all(m.model.name == "tiny-sd" for m in managers)
    request = Limits().normalize(Txt2ImgRequest(prompt="x", width=64, height=64, sampling=Sampling(steps=30, seed=1)))
    started = threading.Barrier(2)
    workers = []

    def run():
        started.wait()
        workers.append(pool.run(request).worker)

    threads = [threading.Thread(target=run) for _ in range(2)]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert sorted(w.split("(slot ")[1] for w in workers) == ["0)", "1)"]
    assert pool.concurrency == 2


def test_zerogpu_booking_grows_with_the_work_and_is_bounded():
    def seconds(**kw):
        sampling = Sampling(**{"steps": 20, "seed": 1, **kw.pop("sampling", {})})
        return gpu_seconds(Limits().normalize(Txt2ImgRequest(prompt="x", sampling=sampling, **kw)))

    base = seconds(width=512, height=512)
    assert seconds(width=1024, height=1024) > base
    assert seconds(width=512, height=512, sampling={"steps": 50}) > base
    assert seconds(width=512, height=512, sampling={"batch_size": 4}) > base
    assert seconds(width=2048, height=2048, sampling={"steps": 150, "batch_size": 8}) == 300


def test_the_zerogpu_wrapper_serves_like_the_manager_off_spaces(manager):
    backend = ZeroGPUBackend(manager)  # the `spaces` decorator is a no-op outside a ZeroGPU Space
    request = Limits().normalize(Txt2ImgRequest(prompt="x", width=64, height=64, sampling=Sampling(steps=3, seed=1)))
    events = list(backend.stream(request))
    assert len(events) == 4 and len(events[-1].images) == 1
    assert backend.native_size == manager.native_size


def backend_classes() -> list[type]:
    from serving.procs import ProcessPool

    classes = [PipelineManager, ManagerPool, ProcessPool, ZeroGPUBackend, FairGate]
    try:
        from serving.ray_serve import RayBackend
    except ImportError:  # the Ray backend is optional (requirements-ray.txt)
        return classes
    return classes + [RayBackend]


def _positional(signature: inspect.Signature) -> list[inspect.Parameter]:
    return [p for p in signature.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


@pytest.mark.parametrize("cls", backend_classes(), ids=lambda cls: cls.__name__)
def test_every_backend_class_offers_each_member_of_the_backend_protocol(cls):
    """What ui/ may call (pipelines/core/backend.py) is written out on every backend: each property is a
    property or plain value, each method takes the protocol's arguments at the same positions,
    optional where the protocol's are. Nothing reaches ui/ by __getattr__ forwarding."""
    assert "__getattr__" not in vars(cls)
    for name, kind in backend_members().items():
        member = inspect.getattr_static(cls, name, None)
        assert member is not None or name in getattr(cls, "__annotations__", {}), f"{cls.__name__} lacks {name}"
        if kind == "property":
            assert isinstance(member, property) or not callable(member), f"{cls.__name__}.{name} should be a value"
            continue
        assert callable(member), f"{cls.__name__}.{name} should be a method"
        wanted, offered = (_positional(inspect.signature(f)) for f in (getattr(Backend, name), member))
        assert len(offered) >= len(wanted), f"{cls.__name__}.{name} takes too few arguments"
        for want, have in zip(wanted, offered):
            if want.default is not inspect.Parameter.empty:
                assert have.default is not inspect.Parameter.empty, f"{cls.__name__}.{name}: {have.name} must be optional"
        assert all(p.default is not inspect.Parameter.empty for p in offered[len(wanted):]), f"{cls.__name__}.{name}"


def test_local_backends_are_backends_and_run_the_lab_through_their_job_path(manager):
    """The instances ui/ gets satisfy the protocol at run time, and each runs a Diffusion-lab request
    like a generation (a pool slot, a ZeroGPU booking)."""
    backends = [manager, ManagerPool([manager]), ZeroGPUBackend(manager), ZeroGPUBackend(ManagerPool([manager])),
                FairGate(manager)]
    for backend in backends:
        assert isinstance(backend, Backend)
        assert (backend.train_steps, backend.native_size, backend.concurrency) == (1000, 64, 1)
        view = backend.run(LabForwardRequest(None, 250, 2))
        assert view.t == 250 and view.latent_decoded.size == (64, 64)
        events = list(backend.stream(LabSchedulesRequest()))
        assert len(events) == 1 and events[0][-1].name.startswith("this model")
    assert gpu_seconds(LabForwardRequest()) == 60  # a lab call on ZeroGPU books a fixed slice


@pytest.mark.slow
def test_ray_serve_backend_spreads_concurrent_requests_over_two_replicas(tiny_model_dir, tmp_path):
    pytest.importorskip("ray.serve", reason="the Ray backend is optional: pip install -r requirements-ray.txt")
    server = AppServer(["--model", str(tiny_model_dir), "--backend", "ray", "--ray-replicas", "2", "--no-save-outputs"],
                       log_path=tmp_path / "app.log")
    try:
        server.wait_ready(timeout=240)
        clients = [Client(server.url, verbose=False) for _ in range(6)]
        jobs = [c.submit(*t2i(prompt=f"request {i}", steps=20, seed=i), api_name="/txt2img") for i, c in enumerate(clients)]
        results = [job.result(timeout=240) for job in jobs]
        for i, (_, gallery, notes, infotext) in enumerate(results):
            assert len(gallery) == 1 and infotext.startswith(f"request {i}\n")
        workers = {notes.split(" on ")[1].split(" — ")[0].split("\n")[0] for _, _, notes, _ in results}
        assert len(workers) == 2, workers
        # the Diffusion lab runs on the replicas too (it used to need the model in the front end)
        _, _, weights = clients[0].predict(None, 1000, 0, api_name="/lab_forward")
        assert "t = 1000 of 1000" in weights
    finally:
        server.stop()


@pytest.mark.slow
def test_skip_and_interrupt_reach_a_ray_replica(tiny_model_dir):
    pytest.importorskip("ray.serve", reason="the Ray backend is optional: pip install -r requirements-ray.txt")
    from pipelines.core.jobs import Job, StepInfo
    from serving.ray_serve import RayBackend

    backend = RayBackend(str(tiny_model_dir), {"device": "cpu"}, replicas=1)
    try:
        def run(job, batch_count, act):
            steps = []
            request = Limits().normalize(Txt2ImgRequest(prompt="x", width=64, height=64,
                                                        sampling=Sampling(steps=80, seed=1, batch_count=batch_count)))
            for event in backend.stream(request, job):
                if isinstance(event, StepInfo):
                    steps.append(event.batch)
                    if len(steps) == 3:
                        act(job)
                else:
                    return event, steps

        skipped, steps = run(Job(), 2, Job.skip)
        assert not skipped.interrupted and len(skipped.images) == 2
        assert steps.count(0) < 80 and steps.count(1) == 80  # the first batch cut short, the second whole
        stopped, steps = run(Job(), 2, Job.cancel)
        assert stopped.interrupted and len(steps) < 80
        # run() without a progress callback: no steps come back, Interrupt still reaches the replica
        request = Limits().normalize(Txt2ImgRequest(prompt="x", width=64, height=64,
                                                    sampling=Sampling(steps=80, seed=1, batch_count=4)))
        job, outcome = Job(), []
        thread = threading.Thread(target=lambda: outcome.append(backend.run(request, job=job)))
        thread.start()
        time.sleep(0.5)  # running or about to: the replica reads the flag whenever it starts
        job.cancel()
        thread.join(120)
        assert outcome and outcome[0].interrupted
        short = Limits().normalize(Txt2ImgRequest(prompt="x", width=64, height=64, sampling=Sampling(steps=4, seed=2)))
        events = list(backend._events(short, None, steps=False))
        assert len(events) == 1 and np.array_equal(np.asarray(events[0].images[0].image),
                                                    np.asarray(list(backend.stream(short))[-1].images[0].image))
    finally:
        backend.shutdown()
