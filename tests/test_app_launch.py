"""Starting the app: offline by default, and useful even when no model can be loaded."""
from __future__ import annotations

from pathlib import Path

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from conftest import AppServer
from settings import Settings

NETWATCH = Path(__file__).resolve().parent / "netwatch"


def test_app_makes_no_outbound_network_call_at_launch_or_while_generating(tiny_model_dir, tmp_path):
    log = tmp_path / "net.log"
    log.touch()
    # A user's plain environment: none of the test suite's offline variables.
    env = {"PYTHONPATH": str(NETWATCH), "NETWATCH_LOG": str(log), "HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": "",
           "HF_HUB_DISABLE_TELEMETRY": "", "GRADIO_ANALYTICS_ENABLED": "", "DO_NOT_TRACK": ""}
    server = AppServer(["--model", str(tiny_model_dir), "--no-save-outputs"], env=env, log_path=tmp_path / "app.log")
    try:
        server.wait_ready()
        client = Client(server.url, verbose=False)
        client.predict("a red circle", "", "Euler a", 2, True, 7, 0, 1, 1, 1, 64, 64, api_name="/txt2img")
    finally:
        server.stop()
    assert log.read_text() == "", f"outbound network attempts: {log.read_text()}"


def test_app_starts_without_a_model_and_says_what_to_pass(tmp_path):
    server = AppServer(["--model", "/no/such/model.safetensors"], log_path=tmp_path / "app.log")
    try:
        server.wait_ready()
        client = Client(server.url, verbose=False)
        config = client.config
        status = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "status")
        assert "does not exist" in status["props"]["value"] and "diffusers folder" in status["props"]["value"]
        with pytest.raises(AppError, match="No model is loaded.*--model"):
            client.predict("a", "", "Euler a", 2, True, 7, 0, 1, 1, 1, 64, 64, api_name="/txt2img")
    finally:
        server.stop()


def test_settings_come_from_flags_then_environment_then_defaults(monkeypatch):
    monkeypatch.setenv("SD_STUDIO_MAX_SIZE", "1001")
    monkeypatch.setenv("SD_STUDIO_SAVE_OUTPUTS", "false")
    monkeypatch.setenv("SD_STUDIO_MODEL", "from-env/model")
    monkeypatch.setenv("SD_STUDIO_MAX_GRID_CELLS", "9")
    settings = Settings.from_args(["--model", "from/flag", "--port", "9000"])
    assert settings.model == "from/flag" and settings.port == 9000
    assert settings.save_outputs is False
    assert settings.limits.max_width == 1000  # limits are kept to multiples of 8
    assert settings.limits.max_grid_cells == 9
    assert Settings.from_args(["--save-outputs"]).save_outputs is True
