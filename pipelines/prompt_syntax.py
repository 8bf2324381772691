"""A1111 prompt syntax, parsed once in the request layer (torch-free), the same for the UI,
the REST API, X/Y grids and PNG info.

Extra networks: ``<lora:name>`` / ``<lora:name:weight>`` (A1111: the tag is removed from the
text the encoder reads; its weight multiplies the LoRA's update; several tags add up).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

_LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([^:>]*))?(?::[^>]*)?>", re.IGNORECASE)


@dataclass(frozen=True)
class LoraTag:
    name: str  # as written: a file stem in the Lora/ folder
    weight: float = 1.0


def extract_loras(text: str) -> tuple[str, tuple[LoraTag, ...]]:
    """(text without the tags, the tags in order). A tag naming the same LoRA twice adds up
    its weights, as A1111 does. A weight that is not a finite number is an error."""
    tags: dict[str, float] = {}

    def take(match: re.Match) -> str:
        name = match.group(1).strip()
        raw = (match.group(2) or "1").strip()
        try:
            weight = float(raw)
        except ValueError:
            raise ValueError(f"The LoRA weight in “{match.group(0)}” is not a number.") from None
        if not math.isfinite(weight):
            raise ValueError(f"The LoRA weight in “{match.group(0)}” must be a finite number.")
        tags[name] = tags.get(name, 0.0) + weight
        return ""

    clean = _LORA_TAG.sub(take, text)
    return re.sub(r"[ \t]{2,}", " ", clean).strip(), tuple(LoraTag(n, w) for n, w in tags.items())
