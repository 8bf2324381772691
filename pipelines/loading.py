"""Where a model comes from: a local diffusers folder, a single checkpoint file, or a Hub id.

Each source turns into one diffusers StableDiffusionPipeline; every failure becomes a
ModelLoadError whose message says what to pass instead. Offline (the default), a Hub id
is looked up in the local cache only, so nothing ever waits on the network.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from .errors import ModelLoadError

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
WHAT_TO_PASS = (
    "Pass a diffusers folder (containing model_index.json), a single .safetensors/.ckpt "
    "checkpoint, or a Hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5."
)


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "folder" | "single_file" | "hub"
    location: str

    @property
    def name(self) -> str:
        """Short name for the UI and the infotext's Model field."""
        if self.kind == "hub":
            return self.location
        return Path(self.location).stem if self.kind == "single_file" else Path(self.location).name


def resolve_source(text: str) -> ModelSource:
    """Classify what the user typed; raise a ModelLoadError for what cannot be a model."""
    text = (text or "").strip()
    if not text:
        raise ModelLoadError(f"No model given. {WHAT_TO_PASS}")
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"{text!r} is a folder but not a diffusers pipeline (no model_index.json in it). {WHAT_TO_PASS}")
        return ModelSource("folder", str(path))
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise ModelLoadError(f"{text!r} is not a checkpoint file (expected {', '.join(SINGLE_FILE_SUFFIXES)}). {WHAT_TO_PASS}")
        return ModelSource("single_file", str(path))
    looks_like_path = text.startswith(("/", ".", "~")) or "\\" in text or path.suffix.lower() in SINGLE_FILE_SUFFIXES
    if _HUB_ID.match(text) and not looks_like_path:
        return ModelSource("hub", text)
    raise ModelLoadError(f"Model path {text!r} does not exist. {WHAT_TO_PASS}")


def load_pipeline(
    source: ModelSource,
    dtype: torch.dtype,
    allow_download: bool,
    single_file_config: str | None = None,
) -> StableDiffusionPipeline:
    common = dict(dtype=dtype, safety_checker=None, requires_safety_checker=False)
    try:
        if source.kind == "single_file":
            kwargs = dict(common, local_files_only=not allow_download)
            if single_file_config:
                kwargs["config"] = single_file_config
            return StableDiffusionPipeline.from_single_file(source.location, **kwargs)
        return StableDiffusionPipeline.from_pretrained(
            source.location, local_files_only=source.kind == "folder" or not allow_download, **common
        )
    except ModelLoadError:
        raise
    except Exception as error:  # diffusers raises many kinds; the user needs one clear line
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        if source.kind == "hub" and not allow_download:
            raise ModelLoadError(
                f"{source.location!r} is a Hub id that is not in the local Hugging Face cache, and "
                "downloads are off (offline). Download it where there is internet "
                f"(`huggingface-cli download {source.location}`), or start with --allow-download."
            ) from error
        missing_config = type(error).__name__ == "LocalEntryNotFoundError" or "config" in first_line.lower()
        if source.kind == "single_file" and missing_config:
            raise ModelLoadError(
                f"Could not build a pipeline for {source.location!r}: its architecture's configuration "
                f"is not available offline (tried: {single_file_config or 'none'}). Pass --single-file-config "
                "with a diffusers folder of the same architecture (assets/configs/sd15 serves SD 1.x)."
            ) from error
        raise ModelLoadError(
            f"Could not load {source.location!r} ({type(error).__name__}: {first_line[:300]}). "
            "The file may be incomplete or corrupt, or not a Stable Diffusion 1.x/2.x model."
        ) from error
