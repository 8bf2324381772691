"""What a client sees when a request fails: a sentence, never a server path, a process id or
a Python exception name. Messages meant for users are gr.Error everywhere in ui/; anything
else that escapes an event is logged here (with its traceback: it is a bug) and replaced.
Server log: one line per user error, a traceback only for real bugs."""
from __future__ import annotations

import logging
import math

import gradio as gr
from gradio.exceptions import InvalidPathError
from pydantic import ValidationError
from starlette.responses import JSONResponse

from .uploads import REFUSED

log = logging.getLogger("sd-studio")

UNEXPECTED = ("Something went wrong on the server with this request (it is in the server's log). "
              "Check its values and try again.")
MALFORMED = "This request could not be read: check the endpoint's parameters on the app's API page."


def first_non_finite(value):
    """The first NaN or ±Infinity anywhere in a JSON value, else None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for item in items:
        found = first_non_finite(item)
        if found is not None:
            return found
    return None


def refuse_non_finite(block_fn, inputs) -> None:
    """NaN/Infinity are valid in Python's JSON but never a value of this app: refuse them by
    the field's label before any component or handler sees them."""
    for index, value in enumerate(inputs or []):
        found = first_non_finite(value)
        if found is not None:
            component = block_fn.inputs[index] if index < len(block_fn.inputs) else None
            label = getattr(component, "label", None) or f"Input {index + 1}"
            raise gr.Error(f"{label} must be a finite number, got {found}.")


def names_remote_file(value) -> bool:
    """A FileData anywhere in a JSON value whose path is a URL: Gradio would download it before
    any component sees it (the app never fetches anything a client names)."""
    if isinstance(value, dict):
        path = value.get("path")
        if isinstance(path, str) and "://" in path:
            return True
        return any(names_remote_file(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(names_remote_file(item) for item in value)
    return False


class StudioBlocks(gr.Blocks):
    """gr.Blocks whose events never pass an exception's own text to the client."""

    async def process_api(self, block_fn, inputs, *args, **kwargs):
        try:
            fn = self.fns[block_fn] if isinstance(block_fn, int) else block_fn
            refuse_non_finite(fn, inputs)
            if names_remote_file(inputs):
                raise gr.Error(REFUSED)
            return await super().process_api(block_fn, inputs, *args, **kwargs)
        except gr.Error as error:
            error.print_exception = False  # a user's error: one line below, no traceback
            log.info("request refused: %s", str(error.message)[:300])
            raise
        except ValidationError as error:  # a payload not in the component's form (Gradio's data models)
            log.info("request refused: %d field error(s) in a component payload", error.error_count())
            raise gr.Error(MALFORMED, print_exception=False) from None
        except InvalidPathError:
            # Gradio's own check of a FileData path with "meta": the same refusal as ours.
            log.info("request refused: a file path the server did not receive")
            raise gr.Error(REFUSED, print_exception=False) from None
        except Exception as error:
            log.error("unexpected error in an event", exc_info=error)
            raise gr.Error(UNEXPECTED, print_exception=False) from None


class MalformedRequests:
    """ASGI middleware: a route of Gradio's failing on a malformed body answers 400 with a
    message (not a bare 500), and the log gets one line, not a traceback."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as error:
            if started:
                raise
            log.info("malformed request to %s: %s", scope.get("path", ""), type(error).__name__)
            await JSONResponse({"error": MALFORMED}, status_code=400)(scope, receive, send)
