"""Which models are on this machine, in ONE catalogue: the models folder (A1111's layout), the
shipped demo family, and the local Hugging Face cache. File-system only (no torch, no
network), so the UI can list choices cheaply; scanned at start and on Refresh.

    models/                        (--models-dir, SD_STUDIO_MODELS_DIR; default ./models)
      Stable-diffusion/  checkpoints: .safetensors/.ckpt files or diffusers folders (9-channel
                         inpainting ones are listed as inpainting models)
      Lora/              LoRAs: kohya/A1111 .safetensors (.pt/.ckpt/.bin), diffusers/PEFT folders
      embeddings/        textual inversion: .pt/.safetensors/.bin, the file stem is the word
      VAE/               .safetensors/.ckpt/.pt files or diffusers AutoencoderKL folders
      ControlNet/        .safetensors/.pth/.ckpt files or diffusers ControlNet folders

Every entry has a short name (file stem or folder name; a Hub id for the cache) for dropdowns
and infotext, and a source (path or Hub id) the loaders read. ``resolve(kind, name)`` maps a
name back to its source and answers None for anything not in the catalogue (a public host
can restrict model fields to catalogue entries with it).
"""
from __future__ import annotations

import json
import os
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
ASSET_MODELS = ROOT / "assets" / "models"
DEFAULT_MODELS_DIR = "models"

KINDS = ("checkpoint", "inpaint", "lora", "embedding", "vae", "controlnet")
FOLDERS = {"checkpoint": "Stable-diffusion", "lora": "Lora", "embedding": "embeddings", "vae": "VAE",
           "controlnet": "ControlNet"}
SUFFIXES = {
    "checkpoint": (".safetensors", ".ckpt"),
    "lora": (".safetensors", ".pt", ".ckpt", ".bin"),
    "embedding": (".safetensors", ".pt", ".bin"),
    "vae": (".safetensors", ".ckpt", ".pt"),
    "controlnet": (".safetensors", ".pth", ".ckpt", ".pt", ".bin"),
}
DIFFUSERS_LORA_FILES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin", "adapter_model.safetensors")
MAX_HEADER_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str  # what dropdowns, prompts (<lora:name>, embedding words) and infotext use
    source: str  # path or Hub id, for loaders and tooltips only
    origin: str  # "models folder" | "demo" | "Hugging Face cache"


@dataclass
class Catalog:
    models_dir: Path
    generation: int = 0  # which scan of this process this is (adapters reload embeddings when it moves)
    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})

    def add(self, kind: str, name: str, source: str, origin: str) -> None:
        table = self.entries[kind]
        if any(e.source == source for e in table.values()):
            return
        unique, n = name, 2
        while unique in table:  # same stem in two places: the later one gets a suffix
            unique, n = f"{name} ({n})", n + 1
        table[unique] = Entry(kind, unique, source, origin)

    def names(self, kind: str) -> list[str]:
        return list(self.entries[kind])

    def entry(self, kind: str, name: str) -> Entry | None:
        return self.entries.get(kind, {}).get(name) if isinstance(name, str) else None

    def resolve(self, kind: str, name: str) -> str | None:
        entry = self.entry(kind, name)
        return entry.source if entry else None

    def name_of(self, kind: str, source: str) -> str | None:
        """The catalogue name of a source (path or Hub id), if listed."""
        for entry in self.entries[kind].values():
            if entry.source == source or _same_path(entry.source, source):
                return entry.name
        return None


def _same_path(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, ValueError):
        return False


# ----------------------------------------------------------------------------- file probes
def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def safetensors_header(path: Path) -> dict:
    """The JSON header of a .safetensors file (tensor names, shapes, metadata), read without
    loading any tensor; {} when the file is not a readable safetensors file."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > MAX_HEADER_BYTES:
                return {}
            header = json.loads(f.read(length))
            return header if isinstance(header, dict) else {}
    except (OSError, ValueError, struct.error):
        return {}


def _nine_channel_file(path: Path) -> bool:
    """An SD-inpainting single file: its UNet's first conv reads 9 channels."""
    if path.suffix.lower() != ".safetensors":
        return "inpaint" in path.stem.lower()
    conv = safetensors_header(path).get("model.diffusion_model.input_blocks.0.0.weight", {})
    shape = conv.get("shape") if isinstance(conv, dict) else None
    return bool(shape) and len(shape) == 4 and shape[1] == 9


def _nine_channel_folder(folder: Path) -> bool:
    return _json(folder / "unet" / "config.json").get("in_channels") == 9


def _class_name(config: Path) -> str:
    return str(_json(config).get("_class_name", ""))


def _walk(folder: Path, max_depth: int = 6) -> list[Path]:
    """Every file under folder, following symlinked folders (models are often linked in from
    elsewhere), at most max_depth levels down (a link loop ends there)."""
    if not folder.is_dir():
        return []
    found = []
    for here, dirs, files in os.walk(folder, followlinks=True):
        depth = len(Path(here).relative_to(folder).parts)
        if depth >= max_depth:
            dirs[:] = []
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(here) / f for f in files if not f.startswith(".")]
    return sorted(found)


def _files(folder: Path, suffixes) -> list[Path]:
    return [p for p in _walk(folder) if p.suffix.lower() in suffixes]


def _named(folder: Path, file_name: str) -> list[Path]:
    return [p for p in _walk(folder) if p.name == file_name]


def _name(path: Path, folder: Path) -> str:
    """File stem (folder name) as A1111 lists them, with sub-folders kept: 'sub/name'."""
    rel = path.relative_to(folder)
    stem = rel.with_suffix("") if path.is_file() else rel
    return stem.as_posix()


# ----------------------------------------------------------------------------- scanning
def _scan_models_folder(cat: Catalog, root: Path, origin: str) -> None:
    sd = root / FOLDERS["checkpoint"]
    if sd.is_dir():
        for index in _named(sd, "model_index.json"):
            folder = index.parent
            kind = "inpaint" if _nine_channel_folder(folder) else "checkpoint"
            cat.add(kind, _name(folder, sd), str(folder), origin)
        folders = [i.parent for i in _named(sd, "model_index.json")]
        for path in _files(sd, SUFFIXES["checkpoint"]):
            if any(f in path.parents for f in folders):
                continue  # a diffusers folder's own weight files
            cat.add("inpaint" if _nine_channel_file(path) else "checkpoint", _name(path, sd), str(path), origin)
    lora = root / FOLDERS["lora"]
    for path in _files(lora, SUFFIXES["lora"]):
        if path.name in DIFFUSERS_LORA_FILES:  # a diffusers/PEFT folder: named after the folder
            cat.add("lora", _name(path.parent, lora), str(path), origin)
        elif not path.name.startswith("adapter_config"):
            cat.add("lora", _name(path, lora), str(path), origin)
    embeddings = root / FOLDERS["embedding"]
    for path in _files(embeddings, SUFFIXES["embedding"]):
        cat.add("embedding", path.stem, str(path), origin)  # the word is the file stem
    vae = root / FOLDERS["vae"]
    if vae.is_dir():
        folders = [c.parent for c in _named(vae, "config.json")]
        for folder in folders:
            if _class_name(folder / "config.json") == "AutoencoderKL":
                cat.add("vae", _name(folder, vae), str(folder), origin)
        for path in _files(vae, SUFFIXES["vae"]):
            if not any(f in path.parents for f in folders):
                cat.add("vae", _name(path, vae), str(path), origin)
    cn = root / FOLDERS["controlnet"]
    if cn.is_dir():
        folders = set()
        for config in _named(cn, "config.json"):
            if _class_name(config) == "ControlNetModel":
                folders.add(config.parent)
                cat.add("controlnet", _name(config.parent, cn), str(config.parent), origin)
        for path in _files(cn, SUFFIXES["controlnet"]):
            if not any(f in path.parents for f in folders):
                cat.add("controlnet", _name(path, cn), str(path), origin)


def _scan_demo(cat: Catalog) -> None:
    """The shipped family (assets/models/demo*), always listed, plus its Lora/ and embeddings/."""
    for folder in sorted(p for p in ASSET_MODELS.glob("*") if p.is_dir()):
        if (folder / "model_index.json").is_file():
            cat.add("inpaint" if _nine_channel_folder(folder) else "checkpoint", folder.name, str(folder), "demo")
        elif _nine_channel_folder(folder):
            cat.add("inpaint", folder.name, str(folder), "demo")
        elif _class_name(folder / "config.json") == "ControlNetModel":
            cat.add("controlnet", folder.name, str(folder), "demo")
    _scan_models_folder(cat, ASSET_MODELS, "demo")


def _hub_cache_dir() -> Path:
    """Read at each scan (huggingface_hub reads its default once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def _scan_hub_cache(cat: Catalog) -> None:
    """Models in the local Hugging Face cache, via huggingface_hub's own scan: the revision
    refs/main points at (what an offline load of the Hub id reads), else the newest one."""
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir(_hub_cache_dir())
    except Exception:  # no cache yet, or an unreadable one: nothing to list
        return
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        main = [r for r in repo.revisions if "main" in r.refs]
        revision = main[0] if main else max(repo.revisions, key=lambda r: r.last_modified)
        snapshot = Path(revision.snapshot_path)
        source = repo.repo_id if main else str(snapshot)
        if _nine_channel_folder(snapshot):
            cat.add("inpaint", repo.repo_id, source, "Hugging Face cache")
        elif (snapshot / "model_index.json").is_file():
            cat.add("checkpoint", repo.repo_id, source, "Hugging Face cache")
        else:
            kind = {"ControlNetModel": "controlnet", "AutoencoderKL": "vae"}.get(_class_name(snapshot / "config.json"))
            if kind:
                cat.add(kind, repo.repo_id, source, "Hugging Face cache")


def scan(models_dir: str | Path | None = None) -> Catalog:
    cat = Catalog(Path(models_dir if models_dir is not None else configured_dir()).expanduser())
    _scan_demo(cat)
    if cat.models_dir.resolve() != ASSET_MODELS.resolve():
        _scan_models_folder(cat, cat.models_dir, "models folder")
    _scan_hub_cache(cat)
    return cat


# ----------------------------------------------------------------------------- the process's catalogue
_lock = threading.Lock()
_dir: str | None = None
_current: Catalog | None = None


def configured_dir() -> str:
    return _dir or os.environ.get("SD_STUDIO_MODELS_DIR") or DEFAULT_MODELS_DIR


def configure(models_dir: str | Path | None) -> Catalog:
    """Set the models folder (app start) and scan it."""
    global _dir
    _dir = str(models_dir) if models_dir else None
    if _dir:  # worker processes (Ray, a pool's subprocesses) read the same folder
        os.environ["SD_STUDIO_MODELS_DIR"] = str(Path(_dir).expanduser().resolve())
    else:
        os.environ.pop("SD_STUDIO_MODELS_DIR", None)
    return refresh()


def refresh() -> Catalog:
    global _current
    cat = scan()
    with _lock:
        cat.generation = (_current.generation + 1) if _current is not None else 1
        _current = cat
    return cat


_last_scan = 0.0


def refresh_if_stale(seconds: float = 10.0) -> Catalog:
    """A rescan at most every `seconds` (a name missing from the catalogue may just be new;
    a stream of unknown names must not turn into a stream of folder scans)."""
    import time

    global _last_scan
    if time.monotonic() - _last_scan < seconds and _current is not None:
        return _current
    _last_scan = time.monotonic()
    return refresh()


def current() -> Catalog:
    return _current if _current is not None else refresh()


def names(kind: str) -> list[str]:
    return current().names(kind)


def resolve(kind: str, name: str) -> str | None:
    """The source (path or Hub id) of a catalogue name, or None when it is not listed."""
    return current().resolve(kind, name)


def source_for(kind: str, text: str) -> str:
    """A catalogue name → its source; anything else is passed on as typed (a path or Hub id,
    where the host allows them)."""
    return resolve(kind, (text or "").strip()) or text


def display_name(kind: str, source: str) -> str:
    """Short name for infotext and notes: the catalogue's, else a path's stem / folder name."""
    listed = current().name_of(kind, source)
    if listed:
        return listed
    path = Path(source)
    return path.name if path.is_dir() else path.stem if path.is_file() else source


# Compatibility with callers that want plain lists.
def controlnets() -> list[str]:
    return names("controlnet")


def inpaint_models() -> list[str]:
    return names("inpaint")


def default_controlnet(kind: str) -> str | None:
    """The shipped ControlNet whose name mentions kind ("canny", "pose"), if any."""
    return next((n for n in controlnets() if kind in n), None)


def base_models() -> list[str]:
    """Base (txt2img) checkpoints, by catalogue name."""
    return names("checkpoint")


UPSCALER_SUFFIXES = (".pth", ".pt", ".safetensors")


def upscaler_models(folder: str | Path) -> dict[str, Path]:
    """Model upscalers (ESRGAN & co., A1111's models/ESRGAN layout) on disk: file stem → path.
    Only names from here reach the loader, never a path from a request."""
    folder = Path(folder) if folder else None
    if folder is None or not folder.is_dir():
        return {}
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in UPSCALER_SUFFIXES)
    return {p.stem: p for p in files}


def refiners() -> list[str]:
    """SDXL refiners: checkpoint folders holding an SDXL img2img pipeline (A1111 keeps them
    beside the base models); they are not bases, but the catalogue lists them there too."""
    def refiner(name: str) -> bool:
        source = resolve("checkpoint", name) or ""
        return _class_name(Path(source) / "model_index.json") == "StableDiffusionXLImg2ImgPipeline"

    return [name for name in names("checkpoint") if refiner(name)]
