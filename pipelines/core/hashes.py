"""Model file hashes as A1111 writes them into infotext (torch-free, cached per file state).

- ``model_hash``: sha256 of the whole file, first 10 hex digits (A1111's "Model hash",
  "VAE hash"); 12 digits for "TI hashes".
- ``lora_hash``: A1111's LoRA hash, the "addnet" hash of a .safetensors file (sha256 of the
  bytes after the JSON header, so editing metadata keeps it), first 12 hex digits; other
  files: sha256 of the whole file.
A folder (diffusers format) hashes its weight files in name order.
"""
from __future__ import annotations

import hashlib
import struct
from pathlib import Path

_cache: dict[tuple, str] = {}
_CHUNK = 1 << 20


def _digest(path: Path, skip_header: bool) -> str:
    key = (str(path), skip_header, *_state(path))
    if key not in _cache:
        h = hashlib.sha256()
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".json")) \
            if path.is_dir() else [path]
        for file in files:
            with open(file, "rb") as f:
                if skip_header and file.suffix == ".safetensors":
                    (length,) = struct.unpack("<Q", f.read(8))
                    f.seek(8 + length)
                for chunk in iter(lambda: f.read(_CHUNK), b""):
                    h.update(chunk)
        _cache[key] = h.hexdigest()
    return _cache[key]


def _state(path: Path) -> tuple:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def model_hash(source: str, digits: int = 10) -> str:
    path = Path(source or "")
    if not source or not path.exists():
        return ""
    try:
        return _digest(path, skip_header=False)[:digits]
    except (OSError, struct.error):
        return ""


def lora_hash(source: str) -> str:
    path = Path(source or "")
    if not source or not path.exists():
        return ""
    try:
        return _digest(path, skip_header=path.suffix.lower() == ".safetensors")[:12]
    except (OSError, struct.error):
        return ""
