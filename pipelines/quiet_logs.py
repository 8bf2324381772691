"""Diffusers warnings that repeat on every request and say nothing to act on, dropped from
the server log: the float32 "modules that should be kept in float32: []" (from_pipe casts
every request's ControlNet pipeline) and CLIP's truncation warning (it logs the whole
ignored prompt; the app already notes the truncation in the result, once)."""
from __future__ import annotations

import logging

NOISE = (
    "that should be kept in float32: []",
    "The following part of your input was truncated because CLIP",
)


class DropRepeatedNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage() if record.args else str(record.msg)
        return not any(part in message[:500] for part in NOISE)


def install() -> None:
    """On diffusers' own handler (its loggers do not propagate to the root)."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.get_logger("diffusers")  # makes sure the library handler exists
    for handler in logging.getLogger("diffusers").handlers:
        if not any(isinstance(f, DropRepeatedNoise) for f in handler.filters):
            handler.addFilter(DropRepeatedNoise())
