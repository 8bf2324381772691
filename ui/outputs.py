"""Saving results: PNGs with their infotext under the outputs folder, named by us only.

No part of a path comes from user input (prompt, upload name), so nothing can be written
outside the outputs folder."""
from __future__ import annotations

import re
import threading
from datetime import date
from pathlib import Path

from pipelines.jobs import GeneratedImage
from pipelines.metadata import PNG_KEY, png_bytes, save_png

_NUMBERED = re.compile(r"^(\d{5})-")


class OutputStore:
    # One lock for every store of the process: the tabs and the REST API number files in the
    # same folders.
    _lock = threading.Lock()

    def __init__(self, root: str | Path, enabled: bool = True):
        self.root = Path(root).resolve()
        self.enabled = enabled

    def folder(self, task: str) -> Path:
        return self.root / task / date.today().isoformat()

    def save(self, task: str, images: list[GeneratedImage]) -> list[Path]:
        """Write each image as <outputs>/<task>/<date>/<nnnnn>-<seed>.png; [] when saving is off."""
        if not self.enabled:
            return []
        folder = self.folder(task)
        with self._lock:
            next_number = self._next_number(folder)
            paths = []
            for offset, item in enumerate(images):
                path = folder / f"{next_number + offset:05d}-{item.seed}.png"
                paths.append(save_png(item.image, item.infotext, path))
        return paths

    def save_grid(self, task: str, image, infotext: str, chunks: dict[str, str]) -> Path | None:
        """An X/Y grid as <outputs>/<task>-grids/<date>/<nnnnn>-grid.png, with its infotext and
        extra PNG text chunks (every cell's infotext); None when saving is off."""
        if not self.enabled:
            return None
        folder = self.folder(f"{task}-grids")
        with self._lock:
            path = folder / f"{self._next_number(folder):05d}-grid.png"
            path.write_bytes(png_bytes(image, infotext, chunks))
        return path

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
