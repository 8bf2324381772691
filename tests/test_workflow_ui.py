"""The parts of the workflow UI (issue 13) that hold logic of their own: the ETA, which
remembered values are taken back, where the host keeps defaults, Skip per session."""
from __future__ import annotations

import math

from pipelines.core.jobs import Job
from pipelines.core.requests import Limits
from settings import Settings
from ui.jobs import SessionJobs
from ui.progress import Eta
from ui.remember import HostDefaults, checked


def test_the_progress_line_carries_percent_and_an_eta_from_measured_step_times():
    now = [100.0]
    eta = Eta(clock=lambda: now[0])
    assert eta.describe(0.1, "step 2/20") == "10% · step 2/20"  # no step time measured yet
    now[0] += 4.0  # 0.2 of the run took 4 s: the 0.7 left takes 14 s
    assert eta.describe(0.3, "step 6/20") == "30% · step 6/20 · ETA 14 s"
    now[0] += 60.0
    assert eta.describe(0.5, "step 10/20").endswith("ETA 1 min 20 s")  # 64 s for 0.4: 0.5 left takes 80 s


def test_remembered_values_a_request_would_refuse_are_dropped():
    limits = Limits(max_steps=50)
    assert checked("steps", 33, limits) == 33
    assert checked("steps", 80, limits) is None  # above this host's limit
    assert checked("cfg_scale", math.nan) is None
    assert checked("cfg_scale", "7") is None
    assert checked("scheduler", "Euler a") == "Euler a"
    assert checked("scheduler", "<script>") is None
    assert checked("prompt", "a red circle") == "a red circle"
    assert checked("prompt", "x" * 1_000_000) is None
    assert checked("cfg", True) is True and checked("cfg", 1) is None


def test_host_defaults_are_kept_beside_outputs_locally_and_never_on_a_space(tmp_path, monkeypatch):
    local = HostDefaults.for_settings(Settings(outputs_dir=str(tmp_path / "outputs")))
    assert local.enabled and local.path == tmp_path / "ui-config.json"
    local.save({"txt2img": {"steps": 33}})
    assert local.load() == {"txt2img": {"steps": 33}}
    monkeypatch.setenv("SPACE_ID", "someone/sd-studio")
    space = HostDefaults.for_settings(Settings.from_args(["--outputs-dir", str(tmp_path / "outputs")]))
    assert not space.enabled and space.load() == {}  # the file is there, a Space does not read it


def test_skip_reaches_only_the_pressing_sessions_job():
    jobs = SessionJobs()
    assert not jobs.skip("alice")  # nothing running
    job = jobs.start("alice")
    other = jobs.start("bob")
    assert jobs.skip("alice")
    assert job.skipping and not other.skipping and not job.cancelled
    jobs.finish("alice", job)
    assert not jobs.skip("alice")
    assert isinstance(other, Job)
