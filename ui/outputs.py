"""Saving results: PNGs with their infotext under the outputs folder, named by us only.

No part of a path comes from user input (prompt, upload name), so nothing can be written
outside the outputs folder. Each file is written to a temporary name and renamed into place
(os.replace), so a full or read-only disk leaves no truncated PNG behind; a failed save is
reported as a sentence (no server path) and the images are still returned to the user."""
from __future__ import annotations

import errno
import logging
import os
import re
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from pipelines.core.jobs import GeneratedImage
from pipelines.core.metadata import PNG_KEY, png_bytes

log = logging.getLogger(__name__)

_NUMBERED = re.compile(r"^(\d{5})-")


def save_problem(error: OSError) -> str:
    """Why a save failed, for a user: no path, no exception name."""
    if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return "the outputs folder's disk is full"
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "the outputs folder is not writable"
    return "the outputs folder could not be written"


def write_atomically(path: Path, data: bytes) -> None:
    """data under path, all or nothing: a temporary file beside it, then one rename."""
    descriptor, temporary = tempfile.mkstemp(prefix=".saving-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


@dataclass
class Saved:
    """What a save did: the files written ([] when off or failed) and a note for the user."""

    paths: list[Path] = field(default_factory=list)
    note: str = ""


class OutputStore:
    # One lock for every store of the process: the tabs and the REST API number files in the
    # same folders.
    _lock = threading.Lock()

    def __init__(self, root: str | Path, enabled: bool = True):
        self.root = Path(root).resolve()
        self.enabled = enabled
        self._reported: set[str] = set()

    def folder(self, task: str) -> Path:
        return self.root / task / date.today().isoformat()

    def relative(self, path: Path) -> str:
        """A saved file's folder as the user may see it: relative to the outputs folder."""
        return path.parent.relative_to(self.root).as_posix()

    def startup_problem(self) -> str:
        """A sentence when saving is on but the outputs folder cannot take a file ("" when fine)."""
        if not self.enabled:
            return ""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            write_atomically(self.root / ".write-test", b"ok")
            os.unlink(self.root / ".write-test")
        except OSError as error:
            problem = save_problem(error)
            self._report(problem, error)
            return f"Images will not be saved: {problem}. They are still shown and can be downloaded."
        return ""

    def _report(self, problem: str, error: OSError) -> None:
        """One log line per distinct problem, not one per image."""
        if problem not in self._reported:
            self._reported.add(problem)
            log.warning("outputs folder %s: %s (%s)", self.root, problem, error)

    def save(self, task: str, images: list[GeneratedImage]) -> Saved:
        """Write each image as <outputs>/<task>/<date>/<nnnnn>-<seed>.png."""
        if not self.enabled:
            return Saved()
        folder = self.folder(task)
        try:
            with self._lock:
                next_number = self._next_number(folder)
                paths = []
                for offset, item in enumerate(images):
                    path = folder / f"{next_number + offset:05d}-{item.seed}.png"
                    write_atomically(path, png_bytes(item.image, item.infotext))
                    paths.append(path)
        except OSError as error:
            return self._failed(error)
        return Saved(paths, f"Saved to the outputs folder: `{self.relative(paths[0])}/`" if paths else "")

    def save_grid(self, task: str, image, infotext: str, chunks: dict[str, str]) -> Saved:
        """An X/Y grid as <outputs>/<task>-grids/<date>/<nnnnn>-grid.png, with its infotext and
        extra PNG text chunks (every cell's infotext)."""
        if not self.enabled:
            return Saved()
        folder = self.folder(f"{task}-grids")
        try:
            with self._lock:
                path = folder / f"{self._next_number(folder):05d}-grid.png"
                write_atomically(path, png_bytes(image, infotext, chunks))
        except OSError as error:
            return self._failed(error)
        return Saved([path], f"Grid saved to the outputs folder: `{self.relative(path)}/`")

    def _failed(self, error: OSError) -> Saved:
        problem = save_problem(error)
        self._report(problem, error)
        return Saved([], f"Not saved: {problem}. The images are shown here; download the ones to keep.")

    @staticmethod
    def _next_number(folder: Path) -> int:
        folder.mkdir(parents=True, exist_ok=True)
        numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _NUMBERED.match(p.name))]
        return max(numbers, default=-1) + 1


def with_infotext(item: GeneratedImage):
    """The image carrying its infotext in .info, so Gradio's PNG encoder keeps it."""
    image = item.image.copy()
    image.info[PNG_KEY] = item.infotext
    return image
