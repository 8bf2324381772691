"""SD Studio: `python app.py` → http://127.0.0.1:7860 on the embedded demo model.

CLI/env → Settings → PipelineManager → ui.build_app → launch (see `python app.py --help`).
"""
from __future__ import annotations

import logging
import os
import sys

from settings import Settings


def configure_network(allow_download: bool) -> None:
    """No outbound call at launch: analytics and telemetry off always, the Hub offline unless
    the user allowed downloads. Must run before gradio/diffusers/huggingface_hub import."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["DO_NOT_TRACK"] = "1"
    if not allow_download:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"


def create_app(settings: Settings):
    """The manager with its initial model, and the Gradio app around it."""
    from pipelines.errors import ModelLoadError
    from pipelines.manager import PipelineManager
    from ui import build_app

    manager = PipelineManager(
        device=settings.device or None,
        dtype=settings.dtype or None,
        allow_download=settings.allow_download,
        single_file_config=settings.single_file_config_or_default,
        vae_tiling=settings.vae_tiling,
        cpu_offload=settings.cpu_offload,
        preview_every=settings.preview_every,
    )
    message = ""
    source = settings.model_source
    if not source:
        message = ("No model is loaded: the embedded demo model is not in assets/models/demo. Start with "
                   "`python app.py --model PATH_OR_HUB_ID` (a diffusers folder, a .safetensors/.ckpt file, "
                   "or a Hub id with --allow-download).")
    else:
        try:
            manager.load_base(source)
        except ModelLoadError as error:
            message = f"**Model not loaded.** {error}"
    if message:
        logging.getLogger("sd-studio").warning(message)
    return manager, build_app(manager, settings, message)


def main(argv: list[str] | None = None) -> None:
    settings = Settings.from_args(argv)
    configure_network(settings.allow_download)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _, app = create_app(settings)
    app.queue(max_size=settings.queue_size, default_concurrency_limit=1)
    app.launch(server_name=settings.host, server_port=settings.port, show_error=True)


if __name__ == "__main__":
    main(sys.argv[1:])
