"""Settings from command-line flags, with defaults from the environment.

The same code serves a laptop and a public Space: limits, whether models may be changed and
whether outputs are saved are settings (env ``SD_STUDIO_*``), not code. Flags win over env.
"""
from __future__ import annotations

import argparse
import hmac
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from pipelines.core.requests import Limits

ROOT = Path(__file__).resolve().parent
DEMO_MODEL = ROOT / "assets" / "models" / "demo"
SD15_CONFIG = ROOT / "assets" / "configs" / "sd15"


# A public Space serves strangers: no saved files, no model swapping, smaller jobs. Each can
# still be set with SD_STUDIO_* variables in the Space's settings.
SPACE_DEFAULTS = {
    "host": "0.0.0.0",
    "save_outputs": False,
    "allow_model_change": False,
    "max_size": 1024,
    "max_steps": 50,
    "max_batch_size": 4,
    "max_batch_count": 4,
    "max_grid_cells": 25,
    "queue_size": 20,
    "max_prompt_chars": 2000,
    "max_upload_megapixels": 16.0,
    "max_upload_mb": 20,
    "max_grid_megapixels": 16.0,
    "cache_max_age_s": 3600,
    "max_queued_per_client": 2,
    "grid_for_batches": False,
    "styles_file": "",  # styles stay in each visitor's session
}


def _env(name: str, default):
    raw = os.environ.get(f"SD_STUDIO_{name.upper()}")
    if raw is None:
        return default
    if isinstance(default, bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return raw


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 7860
    model: str = ""  # empty: the embedded demo model, when present
    outputs_dir: str = "outputs"
    models_dir: str = "models"  # A1111 layout: Stable-diffusion/, Lora/, embeddings/, VAE/, ControlNet/
    save_outputs: bool = True
    allow_download: bool = False  # Hub downloads; off = fully offline, no network at all
    allow_model_change: bool = True
    device: str = ""  # empty: cuda, then mps, then cpu
    dtype: str = ""  # empty: fp16 on accelerators, fp32 on cpu
    vae_tiling: bool = False
    cpu_offload: bool = False
    single_file_config: str = ""  # diffusers folder giving the architecture of single-file checkpoints
    variant: str = ""  # prefer these weight files when a model has them, e.g. fp16
    max_size: int = 2048
    max_steps: int = 150
    max_batch_size: int = 8
    max_batch_count: int = 16
    max_grid_cells: int = 100
    queue_size: int = 64
    grid_for_batches: bool = True  # a batch of >1 images also yields a labelled grid image (A1111's "grid")
    upscaler_dir: str = "models/ESRGAN"  # model upscalers for the hires fix (.pth/.safetensors), A1111's layout
    styles_file: str = "styles.csv"  # A1111's prompt styles file; "" = styles live only in each session
    preview_every: int = 0  # 0: every step on CPU, every 5th on a GPU
    fast_path: str = "auto"  # auto (on for CUDA), off, or a compile mode: regional, full, none
    fp8: bool = False  # fast path: fp8 UNet linears on Ada/Hopper with torchao (lossy; docs/performance.md#fp8)
    max_batch: int = 0  # waiting compatible txt2img requests sampled as one batch: 0 = auto (4 on CUDA, 1 = off on CPU)
    warmup: str = ""  # sizes compiled before serving, e.g. "512" or "512,768x512"; "" = compile in the background
    backend: str = "local"  # "local": managers in this process; "ray": Ray Serve workers
    devices: str = ""  # local: "" one (auto), "all" every CUDA device, or "cuda:0,cuda:1"
    ray_address: str = ""  # "" starts a local Ray cluster; "auto" or ray://host:10001 joins one
    ray_replicas: int = 1
    ray_max_replicas: int = 0  # > ray_replicas: autoscale between the two
    ray_gpus_per_replica: float = -1.0  # -1: 1 when this machine has CUDA, else 0
    api: bool = False  # the AUTOMATIC1111-compatible REST API (/sdapi/v1/…) on the same port
    api_auth: str = ""  # "user:pass[,user2:pass2]": HTTP Basic login for the REST API
    # Host limits, refused before any model call (0: no limit).
    max_prompt_chars: int = 20000  # per prompt / negative prompt
    max_upload_megapixels: float = 50.0  # per uploaded image, read from its header before decoding
    max_upload_mb: int = 50  # per uploaded file (Gradio's max_file_size)
    max_grid_megapixels: float = 100.0  # an X/Y grid's image
    cache_max_age_s: int = 86400  # Gradio's upload/result cache: files older than this are deleted
    max_queued_per_client: int = 0  # jobs one client address may have waiting in the queue
    # Optional login for the UI, the Gradio API and every other route: (user, password) pairs.
    auth: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # never printed with the settings
    auth_file: str = ""  # a file of user:password lines, added to auth

    @property
    def delete_cache(self) -> tuple[int, int] | None:
        """Gradio's delete_cache: (how often, how old) in seconds, or None to keep everything."""
        if self.cache_max_age_s <= 0:
            return None
        return (max(60, self.cache_max_age_s // 4), self.cache_max_age_s)

    @property
    def limits(self) -> Limits:
        size = self.max_size - self.max_size % 8
        return Limits(size, size, self.max_steps, self.max_batch_size, self.max_batch_count, self.max_grid_cells)

    @property
    def model_source(self) -> str:
        """What to load at start: the configured model, else the demo model if shipped."""
        if self.model:
            return self.model
        return str(DEMO_MODEL) if (DEMO_MODEL / "model_index.json").is_file() else ""

    @property
    def single_file_config_or_default(self) -> str | None:
        if self.single_file_config:
            return self.single_file_config
        return str(SD15_CONFIG) if (SD15_CONFIG / "model_index.json").is_file() else None

    @property
    def max_file_size(self) -> str | None:
        return f"{self.max_upload_mb}mb" if self.max_upload_mb > 0 else None

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> "Settings":
        base = dict(SPACE_DEFAULTS) if os.environ.get("SPACE_ID") else {}
        defaults = {f.name: _env(f.name, base.get(f.name, f.default)) for f in fields(cls)}
        defaults["host"] = os.environ.get("GRADIO_SERVER_NAME", defaults["host"])
        defaults["port"] = int(os.environ.get("GRADIO_SERVER_PORT", defaults["port"]))
        parser = argparse.ArgumentParser(description="Stable Diffusion studio in the browser.")
        helps = {
            "model": "diffusers folder, .safetensors/.ckpt file or Hub id (default: the embedded demo model)",
            "outputs_dir": "where generated PNGs are saved",
            "models_dir": "models folder in A1111's layout (Stable-diffusion/, Lora/, embeddings/, VAE/, ControlNet/)",
            "allow_download": "allow downloading Hub models (otherwise the app never touches the network)",
            "single_file_config": "diffusers folder with the configs for single-file checkpoints",
            "max_size": "largest width/height a request may ask for",
            "backend": "local (managers in this process) or ray (Ray Serve workers)",
            "devices": "local backend: '' one device, 'all' every CUDA device, or e.g. cuda:0,cuda:1",
            "ray_address": "'' starts a local Ray cluster; 'auto' or ray://host:10001 joins one",
            "warmup": "GPU: sizes to compile before serving, e.g. 512 or 512,768x512, each at every batch shape up "
                      "to --max-batch (default: none; the first request of a size runs eager while it compiles "
                      "in the background)",
            "api": "serve the AUTOMATIC1111-compatible REST API (/sdapi/v1/..., docs at /docs) on the same port",
            "api_auth": "user:password[,user2:password2]: HTTP Basic login the REST API requires",
            "grid_for_batches": "also save and show a labelled grid of every batch of more than one image",
            "fp8": "GPU fast path: run the UNet's large linear layers in fp8 (Ada/Hopper, needs torchao: "
                   "requirements-gpu.txt); slightly lossy, LoRAs are refused while it is on; env SD_STUDIO_FP8=1",
            "upscaler_dir": "folder of model upscalers (ESRGAN & co.) the hires fix offers",
            "max_batch": "up to this many images of waiting compatible txt2img requests (same size, steps, sampler, "
                         "LoRAs) share one UNet batch, each keeping its own prompt, seed, CFG, progress and "
                         "interrupt; 0 = auto (4 on CUDA, 1 = off elsewhere)",
            "styles_file": "A1111 styles.csv the Styles menus read and save to ('' = per session only)",
        }
        helps.update({
            "max_prompt_chars": "longest prompt (and negative prompt) in characters; 0: no limit",
            "max_upload_megapixels": "largest uploaded image in megapixels, checked before decoding; 0: no limit",
            "max_upload_mb": "largest uploaded file in MB; 0: no limit",
            "max_grid_megapixels": "largest X/Y grid image in megapixels; 0: no limit",
            "cache_max_age_s": "delete uploads and results from Gradio's cache after this many seconds; 0: never",
            "max_queued_per_client": "jobs one client may have waiting in the queue; 0: no limit",
            "auth": "require a login: USER:PASSWORD (repeat for more users; env SD_STUDIO_AUTH, comma-separated)",
            "auth_file": "require a login: a file with one USER:PASSWORD per line",
        })
        for f in fields(cls):
            flag = "--" + f.name.replace("_", "-")
            default = defaults[f.name]
            if f.name == "auth":
                parser.add_argument(flag, action="append", type=_credential_argument, default=None, metavar="USER:PASSWORD",
                                    help=helps[f.name])
            elif isinstance(f.default, bool):
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=helps.get(f.name))
            elif f.name == "backend":
                parser.add_argument(flag, choices=("local", "ray"), default=default, help=helps.get(f.name))
            else:
                parser.add_argument(flag, type=type(f.default), default=default, help=helps.get(f.name))
        values = vars(parser.parse_args(argv))
        try:
            values["auth"] = tuple(values["auth"] or credentials_from_text(os.environ.get("SD_STUDIO_AUTH", ""), ","))
            if values["auth_file"]:
                values["auth"] += credentials_from_file(values["auth_file"])
        except ValueError as error:
            parser.error(str(error))
        return cls(**values)


def credential(text: str) -> tuple[str, str]:
    """USER:PASSWORD → (user, password); the password may itself contain ':'."""
    user, colon, password = text.strip().partition(":")
    if not colon or not user or not password:
        raise ValueError("a login must be written USER:PASSWORD, both non-empty")
    return user, password


def _credential_argument(text: str) -> tuple[str, str]:
    try:
        return credential(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def credentials_from_text(text: str, separator: str) -> list[tuple[str, str]]:
    return [credential(item) for item in text.split(separator) if item.strip() and not item.strip().startswith("#")]


def credentials_from_file(path: str) -> tuple[tuple[str, str], ...]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"cannot read the auth file {path}: {error.strerror}") from error
    found = tuple(credentials_from_text(text, "\n"))
    if not found:
        raise ValueError(f"the auth file {path} holds no USER:PASSWORD line")
    return found


def check_credentials(settings: Settings, user: str, password: str) -> bool:
    """True when (user, password) is one of the configured logins (always False when auth is off).
    Compared in constant time, and every pair is compared, so timing tells nothing."""
    ok = False
    for known_user, known_password in settings.auth:
        same_user = hmac.compare_digest(known_user.encode(), (user or "").encode())
        same_password = hmac.compare_digest(known_password.encode(), (password or "").encode())
        ok |= same_user and same_password
    return ok
