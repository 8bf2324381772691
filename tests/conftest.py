"""Shared pytest setup: offline environment, tiny models, a live app server.

Markers: `slow` (tens of seconds or GBs of RAM; deselect with -m "not slow" for a quick run)
and `browser` (headless Chromium). The README's test command runs everything.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

# Nothing in the tests may touch the network: set before diffusers/gradio are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DO_NOT_TRACK", "1")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `pipelines`, `ui` importable under plain `pytest` too
    sys.path.insert(0, str(ROOT))
TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

ARTIFACTS = TESTS / "artifacts"  # screenshots and diffs of the last run (git-ignored)


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", help="rewrite golden screenshots from this run")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes tens of seconds or GBs of RAM (deselect with -m 'not slow')")
    config.addinivalue_line("markers", "browser: drives the app in headless Chromium")


@pytest.fixture(scope="session")
def update_golden(request) -> bool:
    return request.config.getoption("--update-golden")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tiny_sd import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_controlnet_dir(tiny_model_dir) -> Path:
    """A 'trained' (non-zero) tiny ControlNet for the tiny model, beside it."""
    from diffusers import UNet2DConditionModel
    from tiny_sd import save_tiny_controlnet

    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir, subfolder="unet")
    return save_tiny_controlnet(tiny_model_dir.parent / "tiny-controlnet", unet)


@pytest.fixture(scope="session")
def manager(tiny_model_dir):
    """One manager on the tiny model, shared by tests that only generate (it is thread-safe
    and holds no per-request state)."""
    from pipelines.manager import PipelineManager

    m = PipelineManager(device="cpu")
    m.load_base(str(tiny_model_dir))
    return m


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """`python app.py …` as a real subprocess on a free loopback port."""

    def __init__(self, args: list[str], env: dict | None = None, log_path: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = log_path
        self.log = open(log_path, "w") if log_path else subprocess.DEVNULL
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(self.port), *args],
            cwd=ROOT, env=full_env, stdout=self.log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 120) -> "AppServer":
        import urllib.error
        import urllib.request

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"app exited with {self.process.returncode}: {self.output()}")
            try:
                with urllib.request.urlopen(self.url + "config", timeout=2) as response:
                    if response.status == 200:
                        return self
            except urllib.error.HTTPError as error:
                if error.code == 401:  # serving, behind its login (--auth)
                    return self
                time.sleep(0.5)
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"app not ready after {timeout}s: {self.output()}")

    def output(self) -> str:
        return self.log_path.read_text()[-4000:] if self.log_path else ""

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
        if self.log_path:
            self.log.close()


@pytest.fixture(scope="session")
def app_server(tiny_model_dir, tiny_controlnet_dir, tmp_path_factory):
    """The app on the tiny model, saving outputs into a temporary folder."""
    outputs = tmp_path_factory.mktemp("outputs")
    server = AppServer(
        ["--model", str(tiny_model_dir), "--outputs-dir", str(outputs), "--max-size", "256", "--max-batch-size", "4"],
        log_path=tmp_path_factory.mktemp("logs") / "app.log",
    )
    try:
        server.wait_ready()
        server.outputs_dir = outputs
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def scene():
    """A 64² noise image and a mask over its middle (the SDXL img2img/inpaint tests)."""
    import numpy as np
    from PIL import Image

    init = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    return init, mask
