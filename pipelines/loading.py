"""Where a model comes from: a local diffusers folder, a single checkpoint file, or a Hub id.

Each source turns into one diffusers base pipeline of its family (families.py: SD 1.x/2.x
or SDXL, recognised from model_index.json or the checkpoint's keys); every failure becomes a
ModelLoadError whose message says what to pass instead. Offline (the default), a Hub id
is looked up in the local cache only, so nothing ever waits on the network.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from .core.errors import ModelLoadError
from .families import Family, family_of_folder, family_of_single_file, is_refiner_file, single_file_config as config_for

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


def resolve_source(text: str, folder_marker: str = "model_index.json", what: str = "a diffusers pipeline",
                   what_to_pass: str = WHAT_TO_PASS) -> ModelSource:
    """Classify what the user typed; raise a ModelLoadError for what cannot be a model.
    folder_marker: the file a folder of this kind holds (model_index.json for pipelines,
    config.json for a single model such as a ControlNet)."""
    text = (text or "").strip()
    if not text:
        raise ModelLoadError(f"No model given. {what_to_pass}")
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / folder_marker).is_file():
            raise ModelLoadError(f"{text!r} is a folder but not {what} (no {folder_marker} in it). {what_to_pass}")
        return ModelSource("folder", str(path))
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise ModelLoadError(f"{text!r} is not a checkpoint file (expected {', '.join(SINGLE_FILE_SUFFIXES)}). {what_to_pass}")
        return ModelSource("single_file", str(path))
    looks_like_path = text.startswith(("/", ".", "~")) or "\\" in text or path.suffix.lower() in SINGLE_FILE_SUFFIXES
    if _HUB_ID.match(text) and not looks_like_path:
        return ModelSource("hub", text)
    raise ModelLoadError(f"Model path {text!r} does not exist. {what_to_pass}")


def explain(error: Exception, source: ModelSource, allow_download: bool, config: str | None,
            what: str = "a Stable Diffusion 1.x/2.x model") -> ModelLoadError:
    """diffusers raises many kinds of errors while loading; the user needs one clear line."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if source.kind == "hub" and not allow_download:
        return ModelLoadError(
            f"{source.location!r} is a Hub id that is not in the local Hugging Face cache, and "
            "downloads are off (offline). Download it where there is internet "
            f"(`huggingface-cli download {source.location}`), or start with --allow-download."
        )
    missing_config = type(error).__name__ == "LocalEntryNotFoundError" or "config" in first_line.lower()
    # Weights whose shapes differ from the config's: another architecture than the config describes.
    missing_config = missing_config or "expected shape" in first_line or "size mismatch" in first_line
    if source.kind == "single_file" and missing_config:
        return ModelLoadError(
            f"Could not build {source.location!r}: its architecture's configuration is not available "
            f"offline (tried: {Path(config).name if config else 'none'}). Pass --single-file-config with a diffusers folder of "
            "the same architecture (assets/configs/sd15 serves SD 1.x, assets/configs/sdxl SDXL)."
        )
    return ModelLoadError(
        f"Could not load {source.location!r} ({type(error).__name__}: {first_line[:300]}). "
        f"The file may be incomplete or corrupt, or not {what}."
    )


def _with_variant(load, variant: str | None):
    """Prefer the weights' variant (e.g. fp16 files, what a Space preloads), else the default files."""
    if variant:
        try:
            return load(variant=variant)
        except (OSError, ValueError):
            pass
    return load()


def load_module(cls, source: ModelSource, dtype: torch.dtype, allow_download: bool, what: str,
                variant: str | None = None, **kwargs):
    """One model class (ControlNetModel, UNet2DConditionModel) from any source kind."""
    try:
        if source.kind == "single_file":
            return cls.from_single_file(source.location, torch_dtype=dtype, local_files_only=not allow_download, **kwargs)
        local = source.kind == "folder" or not allow_download
        return _with_variant(lambda **v: cls.from_pretrained(source.location, dtype=dtype, local_files_only=local,
                                                             **kwargs, **v), variant)
    except Exception as error:
        raise explain(error, source, allow_download, None, what) from error


def family_of_source(source: ModelSource, allow_download: bool) -> Family:
    if source.kind == "single_file":
        return family_of_single_file(source.location)
    if source.kind == "folder":
        return family_of_folder(source.location)
    try:  # a Hub id: its model_index.json from the cache (or the Hub when allowed)
        from huggingface_hub import hf_hub_download

        index = hf_hub_download(source.location, "model_index.json", local_files_only=not allow_download)
        return family_of_folder(Path(index).parent)
    except Exception:
        return family_of_folder("")  # unknown: SD; the load below explains what is missing


def load_pipeline(
    source: ModelSource,
    dtype: torch.dtype,
    allow_download: bool,
    single_file_config: str | None = None,
    variant: str | None = None,
) -> DiffusionPipeline:
    family = family_of_source(source, allow_download)
    if source.kind == "single_file" and is_refiner_file(source.location):
        raise ModelLoadError(f"{source.name!r} is an SDXL refiner: it cannot generate on its own. Load an SDXL base "
                             "model and choose the refiner in the txt2img tab's Refiner field.")
    common = dict(dtype=dtype, **family.load_kwargs)
    config = config_for(family, single_file_config) if source.kind == "single_file" else single_file_config
    try:
        if source.kind == "single_file":
            kwargs = dict(common, local_files_only=not allow_download, config=config)
            return family.base_class.from_single_file(source.location, **kwargs)
        local = source.kind == "folder" or not allow_download
        return _with_variant(lambda **v: family.base_class.from_pretrained(
            source.location, local_files_only=local, **common, **v), variant)
    except Exception as error:
        raise explain(error, source, allow_download, config,
                      "an SDXL model" if family.is_xl else "a Stable Diffusion 1.x/2.x model") from error
