"""Every request field is declared once, on the request dataclass itself (InvokeAI's
``InputField(default, ge, le, description)`` pattern):

    steps: int = declare(20, "Steps", minimum=1, maximum=1000, step=1, limit="max_steps",
                         infotext="Steps", a1111="steps", axis=True)

From that one line come: the request's validation and normalisation (``check_fields`` in
``__post_init__``: type, range, choices, JSON's 20.0 → 20), the widget of every tab
(``ui/fields.py``: kind, range, step, label, help; the host's ``Limits`` cap the slider),
the Gradio API parameter name (the field's name), the X/Y grid axis (``axis=True``),
the infotext, PNG-info read-back and send-to (``infotext``), and the A1111 REST JSON key (``a1111``;
``a1111_fields()`` maps them; where A1111 sends an index or 0/1, the choice list's comment
in requests.py gives the order).

How to add a field (say ``clip_skip``)
1. Declare it on its request dataclass in ``pipelines/core/requests.py``: ``Sampling`` for the
   sampling settings every task shares, ``Txt2ImgRequest`` for what every generation has,
   ``Img2ImgRequest``/``InpaintRequest``/``ControlUnit`` for theirs:
       clip_skip: int = declare(1, "Clip skip", minimum=1, maximum=12, step=1,
                                infotext="Clip skip", a1111="CLIP_stop_at_last_layers")
   Validation needs no other line. The engine reads ``request.sampling.clip_skip``.
2. Place its widget in the tab's layout: ``form.field("clip_skip")`` (in
   ``ui/common.py`` ``sampler_controls`` for a Sampling field: every tab gets it). The Form
   registers it under its name; the handler receives it by name and ``assemble(Request,
   values)`` puts it where it belongs (nested Sampling included). Nothing else to thread.
3. Nothing else: the infotext writes it under its ``infotext`` key when it differs from its
   default (``pipelines/core/infotext.py``; the engine passes the key as None where the field did
   not act), PNG info reads it back and sends it to the tabs that show it. Add its value to
   the dicts of tests/test_fields_http.py, which send every field over HTTP and read it back.

Torch-free and gradio-free: requests, grids, metadata, ui/ and a REST layer all read it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .errors import RequestError

NUMBER_WIDGET_SPAN = 10_000  # a range wider than this is typed (gr.Number), not slid


@dataclass(frozen=True)
class Field:
    """One request field: what it is, what a request accepts, how a widget shows it, and the
    names it has outside (API parameter, A1111 infotext key, A1111 REST JSON key)."""

    name: str  # the request attribute; also the Gradio API parameter and the elem_id suffix
    kind: type  # bool, int, float or str
    default: Any
    label: str  # the widget's label
    minimum: float | None = None  # what a request accepts (numbers)
    maximum: float | None = None
    step: float | None = None  # the widget's step
    choices: tuple | None = None  # the values a request accepts (text)
    info: str | None = None  # help line under the widget
    title: str | None = None  # name in messages, notes and grid axes (default: label)
    slider: tuple | None = None  # (min, max) of the widget when narrower than what a request accepts
    limit: str | None = None  # the Limits attribute that caps the widget's maximum on this host
    infotext: str | None = None  # A1111 infotext key ("Size-1"/"Size-2": the two halves of "Size: WxH")
    a1111: str | None = None  # A1111 REST API JSON key (sdapi/v1/txt2img, img2img)
    axis: bool = False  # offered as an X/Y grid axis

    @property
    def name_in_text(self) -> str:
        return self.title or self.label

    @property
    def numeric(self) -> bool:
        return self.kind in (int, float)

    def widget_range(self, limits=None) -> tuple[float, float]:
        low, high = self.slider or (self.minimum, self.maximum)
        if self.limit and limits is not None:
            high = getattr(limits, self.limit)
        return low, high

    def check(self, value):
        """The value as the request keeps it (JSON's 20.0 → 20), or a RequestError saying what is wrong."""
        name = self.name_in_text
        if self.kind is object:  # images: the request checks them with its own message
            return value
        if self.kind is bool:
            if not isinstance(value, bool):
                raise RequestError(f"{name} must be true or false, got {value!r}.")
            return value
        if self.kind is str:
            if not isinstance(value, str):
                raise RequestError(f"{name} must be text, got {type(value).__name__}.")
            if self.choices is not None and value not in self.choices:
                what = name if name.isupper() else name[0].lower() + name[1:]
                raise RequestError(f"Unknown {what} {value!r}. Choose one of: {', '.join(self.choices)}.")
            return value
        require_number(name, value, self.minimum, self.maximum, integer=self.kind is int)
        return self.kind(value)

    def parse(self, text: str):
        """A value from its infotext text (None when it does not read as one)."""
        if self.kind is bool:
            return text.strip().lower() not in ("off", "false", "no", "0")
        if self.kind is str:
            return text if self.choices is None else text.strip() if text.strip() in self.choices else None
        try:
            number = float(text)
        except (TypeError, ValueError):
            return None
        if not math.isfinite(number) or (self.kind is int and not number.is_integer()):
            return None
        return self.kind(number)


def require_number(name: str, value, low: float, high: float, integer: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{name} must be a number, got {value!r}.")
    if not math.isfinite(value):
        raise RequestError(f"{name} must be a finite number, got {value}.")
    if integer and value != int(value):
        raise RequestError(f"{name} must be a whole number, got {value}.")
    if not low <= value <= high:
        raise RequestError(f"{name} must be between {_plain(low)} and {_plain(high)}, got {_plain(value)}.")


def _plain(value) -> str:
    """A number as a person writes it: 4294967295, not 4.29497e+09; 0.5 stays 0.5."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e16 else f"{value:g}"


def require_text(name: str, value) -> None:
    if not isinstance(value, str):
        raise RequestError(f"{name} must be text, got {type(value).__name__}.")


def declare(default, label: str, **spec) -> Any:
    """A dataclass field carrying its declaration (the name is filled in from the attribute)."""
    kind = spec.pop("kind", type(default))
    return dataclasses.field(default=default, metadata={"field": Field("", kind, default, label, **spec)})


def nested(cls) -> Any:
    """A dataclass field holding another request part (Sampling) whose fields arrive flat."""
    return dataclasses.field(default_factory=cls, metadata={"nested": cls})


def fields_of(cls) -> dict[str, Field]:
    """The declared fields of a request class, nested parts included, in declaration order."""
    found: dict[str, Field] = {}
    for f in dataclasses.fields(cls):
        if "nested" in f.metadata:
            found.update(fields_of(f.metadata["nested"]))
        elif "field" in f.metadata:
            declared = f.metadata["field"]
            found[f.name] = dataclasses.replace(declared, name=f.name, default=f.default)
    return found


def registry(*classes) -> dict[str, Field]:
    """Every declared field of the classes by name; the first declaration of a name wins."""
    found: dict[str, Field] = {}
    for cls in classes:
        for name, declared in fields_of(cls).items():
            found.setdefault(name, declared)
    return found


def check_fields(request) -> None:
    """Validate and normalise the declared fields of a (frozen) request in place; nested
    parts validate themselves when they are built."""
    for f in dataclasses.fields(request):
        if "field" in f.metadata:
            value = getattr(request, f.name)
            declared = dataclasses.replace(f.metadata["field"], name=f.name)
            object.__setattr__(request, f.name, declared.check(value))


def assemble(cls, values: dict, **parts):
    """A request from flat widget values by name; nested parts (Sampling) are built from
    theirs, and parts (control=…, init_image=…) are passed as they are. A None value (an
    empty widget) means the field's default. A name the class does not have is refused, so
    a misspelt one cannot be dropped silently."""
    unknown = set(values) - set(_all_names(cls))
    if unknown:
        raise RequestError(f"Unknown field(s) for {cls.__name__}: {', '.join(sorted(unknown))}.")

    def build(part, extra):
        kwargs = dict(extra)
        for f in dataclasses.fields(part):
            if "nested" in f.metadata and f.name not in kwargs:
                kwargs[f.name] = build(f.metadata["nested"], {})
            elif f.name in values and f.name not in kwargs and (values[f.name] is not None or "field" not in f.metadata):
                kwargs[f.name] = values[f.name]
        return part(**kwargs)

    return build(cls, parts)


def _all_names(cls) -> list[str]:
    names = []
    for f in dataclasses.fields(cls):
        names += _all_names(f.metadata["nested"]) if "nested" in f.metadata else [f.name]
    return names


def a1111_fields(fields: dict[str, Field]) -> dict[str, Field]:
    """A1111 REST JSON key → our field, for every field A1111 has."""
    return {f.a1111: f for f in fields.values() if f.a1111}

