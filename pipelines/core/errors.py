"""Errors a user can act on. Their messages are shown as they are, so they say what to do."""


class StudioError(Exception):
    """Base of every error whose message is meant for the user."""


class RequestError(StudioError, ValueError):
    """A request field is invalid (NaN, out of range, missing image, unknown scheduler…)."""


class ModelLoadError(StudioError):
    """A model could not be loaded (missing path, corrupt file, Hub id while offline…)."""


class GenerationError(StudioError):
    """Generation failed for a reason the user can fix (out of memory, no model loaded…)."""
