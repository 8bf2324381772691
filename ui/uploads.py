"""Which files a request may name: only what this server itself received (Gradio's upload and
cache folder), and for model fields, entries of the model catalogue.

An API client can send an image input as {"path": "/any/file"}; Gradio checks such a path
only when the payload carries its "meta" marker. Every image input of the app goes through
here before a byte of the file is read, and one refusal message is used whatever the path
(missing, a folder, not an image, someone else's output), so it tells nothing about the disk.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from gradio import utils as gradio_utils
from PIL import Image, UnidentifiedImageError

REFUSED = ("This file was not uploaded to this app. Upload the image (or pick it in the app); "
           "file paths on the server are not accepted.")
UNREADABLE = "The {what} is not an image this app can read. Upload a PNG, JPEG or WebP."


@dataclass
class UploadPolicy:
    """What a host accepts per uploaded image (set once from settings by ui.build_app)."""

    max_megapixels: float = 0.0  # 0: Pillow's own decompression-bomb limit only


POLICY = UploadPolicy()


def upload_folders() -> list[Path]:
    """Where Gradio keeps what clients uploaded and what the app returned (one cache folder)."""
    return [Path(os.path.realpath(gradio_utils.get_upload_folder()))]


def is_received_file(path: str | os.PathLike | None) -> bool:
    """True when path (links followed) lies inside the upload/cache folder."""
    if not path or not isinstance(path, (str, os.PathLike)):
        return False
    text = os.fspath(path)
    if "\0" in text or "://" in text or len(text) > 4096:
        return False
    real = Path(os.path.realpath(text))
    return any(real.is_relative_to(folder) and real != folder for folder in upload_folders())


def require_received(path) -> str:
    if not is_received_file(path):
        raise gr.Error(REFUSED)
    return os.fspath(path)


def payload_paths(payload) -> list:
    """Every "path" of the FileData objects in a component payload (image, editor layers…)."""
    if payload is None:
        return []
    if hasattr(payload, "model_dump"):
        payload = payload.model_dump()
    if isinstance(payload, dict):
        # A FileData: its path, or its URL when it has no path (a URL is refused, never fetched).
        found = [payload.get("path") or payload.get("url")] if "path" in payload else []
        found = [p for p in found if p]
        return found + [p for key, value in payload.items() if key not in ("path", "url", "meta")
                        for p in payload_paths(value)]
    if isinstance(payload, (list, tuple)):
        return [p for item in payload for p in payload_paths(item)]
    return []


def check_size(path: str, what: str) -> None:
    """Refuse an image whose header says it is over the host's megapixels, before decoding it."""
    try:
        with Image.open(path) as image:  # reads the header only
            width, height = image.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as error:
        raise gr.Error(UNREADABLE.format(what=what)) from error
    limit = POLICY.max_megapixels
    if limit and width * height > limit * 1_000_000:
        raise gr.Error(f"The {what} is {width}×{height} ({width * height / 1e6:.1f} megapixels); "
                       f"this host accepts up to {limit:g} megapixels per image.")


def check_payload(payload, what: str = "image") -> None:
    """Refuse (one message) any file the server did not receive; then refuse oversized images."""
    paths = payload_paths(payload)
    for path in paths:
        require_received(path)
    for path in paths:
        if path:
            check_size(path, what)


def open_received_image(path, what: str) -> Image.Image | None:
    """Open an uploaded file fully (a truncated file fails here, with a message)."""
    if not path:
        return None
    require_received(path)
    check_size(path, what)
    try:
        image = Image.open(path)
        image.load()
        return image
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as error:
        raise gr.Error(UNREADABLE.format(what=what)) from error


class SafeImage(gr.Image):
    """An image input that accepts only files this server received, within the host's size."""

    def get_block_name(self) -> str:
        return "image"  # render with Gradio's own image front end (the name is the class name by default)

    def preprocess(self, payload):
        check_payload(payload, "uploaded file")
        try:
            return super().preprocess(payload)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as error:
            raise gr.Error(UNREADABLE.format(what="uploaded file")) from error


class SafeImageMask(gr.ImageMask):
    """gr.ImageMask with the same checks on its background, layers and composite."""

    def get_block_name(self) -> str:
        return "imageeditor"

    def preprocess(self, payload):
        check_payload(payload, "image")
        try:
            return super().preprocess(payload)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as error:
            raise gr.Error(UNREADABLE.format(what="image")) from error


# ------------------------------------------------------------------ model fields
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ModelPolicy:
    """Whether model fields (ControlNet unit model, inpainting model) take only catalogue
    entries: always on a Space and whenever the host does not allow model changes."""

    catalogue_only: bool = True


MODELS = ModelPolicy()


def catalogue_key(entry: str) -> str:
    """How a catalogue entry appears to clients: relative to the app folder when it is inside
    it (no absolute server path in the page or /config), a Hub id or outside path as is."""
    path = Path(entry)
    if path.is_absolute() and path.is_relative_to(ROOT):
        return path.relative_to(ROOT).as_posix()
    return entry


def model_choices(entries: list[str]) -> list[tuple[str, str]]:
    """Dropdown choices (label, value) for catalogue entries."""
    return [(Path(entry).name if Path(entry).is_absolute() else entry, catalogue_key(entry)) for entry in entries]


def resolve_model(value: str | None, entries: list[str], what: str) -> str:
    """The model a field names: its catalogue entry, or (where the host allows) the text as
    given. Outside the catalogue on a locked host: one refusal, whatever the text names."""
    if not value:
        return ""
    for entry in entries:
        if value in (entry, catalogue_key(entry)):
            return entry
    if MODELS.catalogue_only:
        names = ", ".join(label for label, _ in model_choices(entries)) or "none"
        raise gr.Error(f"This host accepts only the {what} models in its list ({names}).")
    return value
