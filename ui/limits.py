"""Host limits checked before any model call: what one request may cost a shared server.

Sizes, steps and batches are pipelines.core.requests.Limits; these are the rest (settings.py sets
them from flags, SD_STUDIO_* variables and the Space defaults). Each refusal is a sentence
with the limit in it, raised before the request reaches the GPU queue's worker."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

PROMPT_FIELDS = (("prompt", "prompt"), ("negative_prompt", "negative prompt"))


@dataclass(frozen=True)
class HostLimits:
    max_prompt_chars: int = 0  # 0: no limit
    max_grid_megapixels: float = 0.0  # 0: no limit

    def check_text(self, text: str | None, what: str = "prompt") -> None:
        if self.max_prompt_chars and text and len(text) > self.max_prompt_chars:
            raise gr.Error(f"The {what} has {len(text):,} characters; this host accepts up to "
                           f"{self.max_prompt_chars:,}. Shorten it.")

    def check_request(self, request) -> None:
        """A request object's prompts (any task: they all carry prompt and negative_prompt)."""
        for name, what in PROMPT_FIELDS:
            self.check_text(getattr(request, name, None), what)

    def check_grid(self, plan) -> None:
        """The grid image a plan would draw: columns × rows cells of the request's size."""
        if not self.max_grid_megapixels or not plan.cells:
            return
        cell = plan.cells[0]
        width, height = plan.columns * cell.width, plan.rows * cell.height
        if width * height > self.max_grid_megapixels * 1_000_000:
            raise gr.Error(f"The grid image would be {width}×{height} ({width * height / 1e6:.0f} megapixels); this "
                           f"host draws grids up to {self.max_grid_megapixels:g} megapixels. Use fewer values or a "
                           f"smaller size.")
