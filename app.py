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
    # Compiled GPU kernels survive restarts here (read by torch at import: set it first).
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.expanduser("~/.cache/sd-studio/inductor"))
    if not allow_download:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"


def manager_kwargs(settings: Settings) -> dict:
    return dict(
        dtype=settings.dtype or None,
        allow_download=settings.allow_download,
        single_file_config=settings.single_file_config_or_default,
        vae_tiling=settings.vae_tiling,
        cpu_offload=settings.cpu_offload,
        preview_every=settings.preview_every,
        variant=settings.variant or None,
        fast_path=fast_path(settings),
        upscaler_dir=settings.upscaler_dir,
        fp8=settings.fp8,
        max_batch=max_batch(settings),
    )


def max_batch(settings: Settings) -> int:
    """--max-batch: 0 = auto (4 on CUDA, 1 elsewhere); 1 on ZeroGPU, which lends the GPU per call."""
    from serving.zerogpu import on_zerogpu

    return 1 if on_zerogpu() else max(0, settings.max_batch)


def fast_path(settings: Settings):
    """--fast-path auto|off|regional|full|none (the last three: compile mode, on any device)."""
    from pipelines.fast_path import FastPath
    from serving.zerogpu import on_zerogpu

    if on_zerogpu():
        return None  # ZeroGPU lends the GPU per call: no torch.compile, no CUDA graphs kept across calls
    if settings.fast_path in ("auto", "off"):
        return "auto" if settings.fast_path == "auto" else None
    return FastPath(compile=settings.fast_path)


def local_devices(settings: Settings) -> list[str | None]:
    if settings.devices == "all":
        import torch

        return [f"cuda:{i}" for i in range(torch.cuda.device_count())] or [None]
    if settings.devices:
        return [d.strip() for d in settings.devices.split(",") if d.strip()]
    return [settings.device or None]


def create_backend(settings: Settings):
    """(backend, message): the manager(s) or workers that generate, with the start-up model
    loaded; message says plainly what is missing when no model could be loaded."""
    from pipelines.core.errors import ModelLoadError
    from serving.zerogpu import ZeroGPUBackend, on_zerogpu

    source = settings.model_source
    message = "" if source else (
        "No model is loaded: the embedded demo model is not in assets/models/demo. Start with "
        "`python app.py --model PATH_OR_HUB_ID` (a diffusers folder, a .safetensors/.ckpt file, "
        "or a Hub id with --allow-download).")
    if settings.backend == "ray":
        import torch

        from pipelines.core.warmup import parse_sizes
        from serving.ray_serve import RayBackend

        gpus = settings.ray_gpus_per_replica
        try:
            warmup = parse_sizes(settings.warmup) if source and not on_zerogpu() else []
        except ValueError as error:
            raise SystemExit(f"Warm-up not done: {error}") from None
        backend = RayBackend(source, manager_kwargs(settings), address=settings.ray_address or None,
                             replicas=settings.ray_replicas, max_replicas=settings.ray_max_replicas or None,
                             gpus_per_replica=(1.0 if torch.cuda.is_available() else 0.0) if gpus < 0 else gpus,
                             warmup=warmup)  # each replica warms up before it serves
        return backend, message
    devices = local_devices(settings)
    kwargs = manager_kwargs(settings)
    if len(devices) > 1:
        # One worker process per device, each with CUDA graphs (serving/procs.py); a pool of
        # threads in this process had to do without graphs and shared one GIL.
        from serving.procs import ProcessPool

        backend = ProcessPool(devices, kwargs)
    else:
        from pipelines.manager import PipelineManager

        backend = PipelineManager(device=devices[0], **kwargs)
    if source:
        try:
            backend.load_base(source)
        except ModelLoadError as error:
            message = f"**Model not loaded.** {error}"
        if not message and settings.warmup and not on_zerogpu():
            from pipelines.core.errors import RequestError
            from pipelines.core.warmup import parse_sizes, warm_up

            try:
                sizes = parse_sizes(settings.warmup)
                if len(devices) > 1:
                    backend.warm_up(sizes)  # every worker process at once
                else:
                    warm_up(backend, sizes)
            except (ValueError, RequestError) as error:
                raise SystemExit(f"Warm-up not done: {error}") from None
    if on_zerogpu():
        backend = ZeroGPUBackend(backend)
    return backend, message


def create_app(settings: Settings):
    """The backend with its initial model, and the Gradio app around it."""
    from pipelines.core import catalog
    from ui import build_app

    from serving.fair import FairGate

    catalog.configure(settings.models_dir)  # the one catalogue every dropdown and loader uses
    backend, message = create_backend(settings)
    backend = FairGate(backend)  # browser tabs and the REST API take turns, first come first served
    if message:
        logging.getLogger("sd-studio").warning(message)
    return backend, build_app(backend, settings, message)


def main(argv: list[str] | None = None) -> None:
    settings = Settings.from_args(argv)
    configure_network(settings.allow_download)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    backend, app = create_app(settings)
    launch(app, backend, settings)


def launch(app, backend, settings: Settings) -> None:
    """Queue, per-client limit, login, upload size and the REST API (--api), then serve."""
    from starlette.middleware import Middleware

    from api import launch_kwargs  # the REST API (--api) shares the server and the port
    from ui import launch_assets
    from settings import check_credentials
    from ui.errors import MalformedRequests
    from ui.jobs import limit_waiting_per_client
    from ui.login import HideApiBeforeLogin

    app.queue(max_size=settings.queue_size, default_concurrency_limit=1)  # GPU events set their own limit
    limit_waiting_per_client(app, settings.max_queued_per_client)
    login = (lambda user, password: check_credentials(settings, user, password)) if settings.auth else None
    kwargs = launch_kwargs(backend, settings)
    kwargs.setdefault("app_kwargs", {})["middleware"] = [Middleware(MalformedRequests), Middleware(HideApiBeforeLogin)]
    # show_error=False: an unexpected exception reaches the client as a generic error, never its
    # text (paths, exception names); every message meant for users is a gr.Error.
    app.launch(server_name=settings.host, server_port=settings.port, show_error=False, auth=login,
               max_file_size=settings.max_file_size, **launch_assets(), **kwargs)


if __name__ == "__main__":
    main(sys.argv[1:])
