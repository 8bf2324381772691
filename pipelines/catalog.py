"""Which models are on this machine: the shipped demo family and what the Hugging Face cache
holds. File-system only (no torch, no network), so the UI can list choices cheaply."""
from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSET_MODELS = ROOT / "assets" / "models"


def _class_name(config: Path) -> str:
    try:
        return json.loads(config.read_text()).get("_class_name", "")
    except (OSError, ValueError):
        return ""


def _hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def _cached_repos(predicate) -> list[str]:
    """Hub ids with a snapshot in the local cache whose config satisfies predicate."""
    found = []
    cache = _hub_cache()
    if not cache.is_dir():
        return found
    for repo in sorted(cache.glob("models--*--*")):
        snapshots = sorted((repo / "snapshots").glob("*")) if (repo / "snapshots").is_dir() else []
        if snapshots and predicate(snapshots[-1]):
            found.append(repo.name[len("models--"):].replace("--", "/", 1))
    return found


def controlnets() -> list[str]:
    """ControlNet folders shipped under assets/models, then cached Hub ControlNets."""
    local = [str(p) for p in sorted(ASSET_MODELS.glob("*")) if _class_name(p / "config.json") == "ControlNetModel"]
    return local + _cached_repos(lambda snap: _class_name(snap / "config.json") == "ControlNetModel")


def inpaint_models() -> list[str]:
    """9-channel UNets: shipped ones, then cached Hub inpainting pipelines."""
    def nine_channels(folder: Path) -> bool:
        try:
            return json.loads((folder / "unet" / "config.json").read_text()).get("in_channels") == 9
        except (OSError, ValueError):
            return False

    local = [str(p) for p in sorted(ASSET_MODELS.glob("*")) if nine_channels(p)]
    return local + _cached_repos(nine_channels)


def default_controlnet(kind: str) -> str | None:
    """The shipped ControlNet whose name mentions kind ("canny", "pose"), if any."""
    return next((c for c in controlnets() if kind in Path(c).name), None)


def base_models() -> list[str]:
    """Base (txt2img) models: shipped diffusers folders, then cached Hub SD pipelines."""
    def base_pipeline(folder: Path) -> bool:
        name = _class_name(folder / "model_index.json")
        return name.startswith("StableDiffusion") and "Inpaint" not in name

    local = [str(p) for p in sorted(ASSET_MODELS.glob("*")) if base_pipeline(p)]
    return local + _cached_repos(base_pipeline)


UPSCALER_SUFFIXES = (".pth", ".pt", ".safetensors")


def upscaler_models(folder: str | Path) -> dict[str, Path]:
    """Model upscalers (ESRGAN & co., A1111's models/ESRGAN layout) on disk: file stem → path.
    Only names from here reach the loader, never a path from a request."""
    folder = Path(folder) if folder else None
    if folder is None or not folder.is_dir():
        return {}
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in UPSCALER_SUFFIXES)
    return {p.stem: p for p in files}
