"""X/Y parameter grids (A1111's "X/Y/Z plot" script, two axes): which parameter each axis
varies, its values in A1111's syntax, one base request expanded into the grid of requests,
and the grid image with labelled rows and columns.

Value syntax (comma-separated items, each one of):
    7.5            a single value
    1-10           every whole step from 1 to 10 (inclusive; 10-1 counts down)
    1-10 (+2)      1, 3, 5, 7, 9: from 1 in steps of 2, up to 10
    1-10 [5]       5 evenly spaced values from 1 to 10, both ends included
Scheduler values are names: "Euler a, DDIM, DPM++ 2M". Every request field declared with
axis=True (pipelines/core/requests.py) is an axis.

No torch and no gradio here: requests in, requests out, PIL for the picture.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace

from PIL import Image, ImageDraw, ImageFont

from .errors import RequestError
from .metadata import build_infotext, parse_infotext
from .fields import Field, fields_of
from .requests import FIELDS, ControlUnit, Img2ImgRequest, InpaintRequest, Limits, Sampling
from .schedulers import ETA_SCHEDULERS

MAX_GRID_CELLS = 100  # one job runs every cell: a bound on how long a click may hold the device
NO_AXIS = "Nothing"


# ----------------------------------------------------------------- axes
# Every field declared with axis=True is an axis (pipelines/core/requests.py); these checks say
# why an axis cannot act on a given request, instead of a grid of identical images.
def _needs_cfg(request):
    if not request.sampling.cfg:
        raise RequestError("CFG is off, so the CFG scale changes nothing: turn CFG on to vary it.")


def _needs_init_image(request):
    if not isinstance(request, Img2ImgRequest):
        raise RequestError("Denoising strength needs an init image: use it on img2img, inpaint, "
                           "or ControlNet with an init image.")


def _needs_control(request):
    if request.control is None:
        raise RequestError("Control weight needs an enabled ControlNet unit.")


def _needs_repaint(request):
    if not isinstance(request, InpaintRequest) or request.mode != "RePaint":
        raise RequestError("RePaint r needs the inpaint tab in RePaint mode.")
    if request.control is not None:
        raise RequestError("RePaint r changes nothing with ControlNet on (it blends without resampling): "
                           "disable the ControlNet units to vary it.")


def _needs_hires(request):
    if not getattr(request, "enable_hr", False):
        raise RequestError("Hires steps and hires denoising strength need txt2img with Hires fix on.")


def _needs_refiner(request):
    if request.task != "txt2img" or not request.refiner.strip() or request.control is not None:
        raise RequestError("Refiner switch at needs txt2img with an SDXL refiner chosen and no ControlNet unit.")


_REQUIRES = {"refiner_switch": _needs_refiner, "cfg_scale": _needs_cfg, "strength": _needs_init_image, "weight": _needs_control, "repaint_r": _needs_repaint,
             "hr_second_pass_steps": _needs_hires, "denoising_strength": _needs_hires}


def set_field(request, name: str, value):
    """The request with one declared field set, wherever it lives (the sampling settings,
    the request itself, or every ControlNet unit alike)."""
    if name in fields_of(Sampling):
        return replace(request, sampling=replace(request.sampling, **{name: value}))
    if name in fields_of(ControlUnit):
        units = tuple(replace(unit, **{name: value}) for unit in request.control.units)
        return replace(request, control=replace(request.control, units=units))
    return replace(request, **{name: value})


@dataclass(frozen=True)
class Axis:
    field: Field  # the request field it varies

    @property
    def name(self) -> str:  # shown in the axis menu, the labels and the infotext
        return self.field.name_in_text

    @property
    def kind(self) -> type:  # int, float or str: how values are parsed
        return self.field.kind

    def apply(self, request, value):
        """The request with this parameter set (a RequestError when it cannot act here)."""
        if self.field.name in _REQUIRES:
            _REQUIRES[self.field.name](request)
        return set_field(request, self.field.name, value)

    def label(self, value) -> str:
        return f"{self.name}: {value:g}" if isinstance(value, float) else f"{self.name}: {value}"


AXES: dict[str, Axis] = {f.name_in_text: Axis(f) for f in FIELDS.values() if f.axis}


def axes_for(*request_classes) -> tuple[str, ...]:
    """The axes a tab offers: those whose field its requests have."""
    names = {name for cls in request_classes for name in fields_of(cls)}
    return tuple(name for name, axis in AXES.items() if axis.field.name in names)


# ----------------------------------------------------------------- value syntax
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)"
_SINGLE = re.compile(rf"^\s*({_NUMBER})\s*$")
_RANGE = re.compile(rf"^\s*({_NUMBER})\s*-\s*({_NUMBER})\s*(?:\(\s*({_NUMBER})\s*\)|\[\s*(\d+)\s*\])?\s*$")
SYNTAX_HELP = 'e.g. "3, 7.5, 12", "1-10 (+2)" (steps of 2) or "1-10 [5]" (5 evenly spaced values)'


def parse_values(axis: Axis, text: str, max_count: int = MAX_GRID_CELLS) -> list:
    """The values an axis takes, from A1111-style text; RequestError says what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise RequestError(f"{axis.name}: enter the values to try, {SYNTAX_HELP}.")
    items = [item.strip() for item in text.split(",")]
    if "" in items:
        raise RequestError(f"{axis.name}: {text!r} has an empty item between commas.")
    if axis.kind is str:
        return [_choice(axis, item) for item in items]
    values: list = []
    for item in items:
        values += _parse_item(axis, item, max_count - len(values))
        if len(values) > max_count:
            raise RequestError(f"{axis.name}: {text!r} makes more than {max_count} values.")
    return values


def _choice(axis: Axis, item: str) -> str:
    choices = axis.field.choices or ()
    by_lower = {name.lower(): name for name in choices}
    if item.lower() not in by_lower:
        raise RequestError(f"{axis.name}: unknown {axis.name.lower()} {item!r}. Choose from: {', '.join(choices)}.")
    return by_lower[item.lower()]


def _parse_item(axis: Axis, item: str, room: int) -> list:
    if match := _SINGLE.match(item):
        return [_number(axis, match.group(1))]
    match = _RANGE.match(item)
    if not match:
        raise RequestError(f"{axis.name}: cannot read {item!r}; write {SYNTAX_HELP}.")
    start, end = float(match.group(1)), float(match.group(2))
    step_text, count_text = match.group(3), match.group(4)
    if count_text is not None:  # [n]: n evenly spaced values, both ends included
        count = int(count_text)
        if count < 1:
            raise RequestError(f"{axis.name}: {item!r} asks for {count} values; ask for at least 1.")
        if count > room:
            raise RequestError(f"{axis.name}: {item!r} makes {count} values; a grid holds at most {MAX_GRID_CELLS} cells.")
        spaced = [start + (end - start) * i / (count - 1) for i in range(count)] if count > 1 else [start]
        return [_number(axis, repr(round(v)) if axis.kind is int else repr(round(v, 10))) for v in spaced]
    step = float(step_text) if step_text is not None else (1.0 if end >= start else -1.0)
    if step == 0:
        raise RequestError(f"{axis.name}: {item!r} has a step of 0; it would never reach {end:g}.")
    if (end - start) * step < 0:
        raise RequestError(f"{axis.name}: {item!r} steps away from {end:g}: use a step of {-step:+g}.")
    if axis.kind is int and not (start.is_integer() and end.is_integer() and step.is_integer()):
        raise RequestError(f"{axis.name} takes whole numbers: {item!r} is not a whole-number range.")
    count = math.floor((end - start) / step + 1e-9) + 1  # inclusive end when a step lands on it
    if count > room:
        raise RequestError(f"{axis.name}: {item!r} makes {count} values; a grid holds at most {MAX_GRID_CELLS} cells.")
    return [_number(axis, repr(round(start + i * step, 10))) for i in range(count)]


def _number(axis: Axis, text: str):
    value = float(text)
    if axis.kind is int:
        if not value.is_integer():
            raise RequestError(f"{axis.name} takes whole numbers, got {text}.")
        return int(value)
    return value


# ----------------------------------------------------------------- expansion
@dataclass(frozen=True)
class AxisValues:
    axis: Axis
    values: tuple
    text: str  # as the user wrote it, for the infotext

    @property
    def labels(self) -> list[str]:
        return [self.axis.label(v) for v in self.values]


@dataclass(frozen=True)
class GridPlan:
    """Every cell's request, row by row (Y outer, X inner), and what labels them."""

    x: AxisValues | None
    y: AxisValues | None
    cells: tuple  # normalized requests, len = rows × columns
    notes: tuple[str, ...] = ()

    @property
    def columns(self) -> int:
        return len(self.x.values) if self.x else 1

    @property
    def rows(self) -> int:
        return len(self.y.values) if self.y else 1

    def cell_label(self, index: int) -> str:
        row, column = divmod(index, self.columns)
        parts = ([self.x.labels[column]] if self.x else []) + ([self.y.labels[row]] if self.y else [])
        return ", ".join(parts)


def axis_values(name: str, text: str) -> AxisValues | None:
    """An axis and its parsed values, or None for the 'Nothing' axis."""
    if not name or name == NO_AXIS:
        return None
    if name not in AXES:
        raise RequestError(f"Unknown grid axis {name!r}. Choose one of: {', '.join(AXES)}.")
    return AxisValues(AXES[name], tuple(parse_values(AXES[name], text)), text.strip())


def plan_grid(base, x: AxisValues | None, y: AxisValues | None, limits: Limits = Limits(),
              max_cells: int = MAX_GRID_CELLS) -> GridPlan:
    """One request per cell: the base request with the X and Y parameters set (nothing else
    differs, so a row or column shows the effect of one parameter). The base is normalized
    first, so every cell shares its seed unless Seed is an axis."""
    if x is None and y is None:
        raise RequestError("Choose a parameter for the X or Y axis to make a grid.")
    if x and y and x.axis is y.axis:
        raise RequestError(f"X and Y both vary {x.axis.name}: choose a different parameter for one of them.")
    count = (len(x.values) if x else 1) * (len(y.values) if y else 1)
    if count > max_cells:
        raise RequestError(f"The grid has {count} cells; at most {max_cells} are allowed. Use fewer values "
                           f"(e.g. a range with [n] for n evenly spaced values).")
    notes = []
    base = limits.normalize(base)
    s = base.sampling
    if s.batch_size > 1 or s.batch_count > 1:
        notes.append("A grid makes one image per cell: batch size and batch count are set to 1.")
        base = replace(base, sampling=replace(s, batch_size=1, batch_count=1))
    for values in (x, y):
        if values and values.axis.field.name == "steps" and max(values.values) > limits.max_steps:
            raise RequestError(f"Steps {max(values.values)} is over this host's limit of {limits.max_steps}.")
    cells = []
    for y_value in (y.values if y else [None]):
        for x_value in (x.values if x else [None]):
            cell = base
            for side, values, value in (("X", x, x_value), ("Y", y, y_value)):
                if values is not None:
                    try:
                        cell = values.axis.apply(cell, value)
                    except RequestError as error:
                        raise RequestError(f"{side} axis, {values.axis.label(value)} — {error}") from error
            cells.append(limits.normalize(cell))  # draws a seed for a Seed value of −1
    _check_eta_acts(base, x, y, cells)
    return GridPlan(x, y, tuple(cells), tuple(notes))


def _check_eta_acts(base, x, y, cells) -> None:
    """DDIM η only enters DDIM steps (and RePaint's own DDIM update): an η axis over other
    schedulers would draw a grid of identical images."""
    if not any(v and v.axis.field.name == "eta" for v in (x, y)):
        return
    if isinstance(base, InpaintRequest) and base.mode == "RePaint" and base.control is None:
        return
    if not any(cell.sampling.scheduler in ETA_SCHEDULERS for cell in cells):
        raise RequestError(f"DDIM η only acts with the DDIM scheduler, and this grid uses "
                           f"{base.sampling.scheduler}: choose DDIM (or vary Scheduler on the other axis).")


# ----------------------------------------------------------------- the grid image
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
MISSING = (224, 224, 224)  # a cell not generated (interrupted)
PAD = 6


def label_font(cell_width: int) -> ImageFont.ImageFont:
    """PIL's built-in font (ships with Pillow, no file or network needed), sized to the cells."""
    return ImageFont.load_default(size=max(11, min(24, cell_width // 9)))


# PIL's built-in font has Latin glyphs only: the lab's and the axes' symbols are spelled out.
_SPELLED = str.maketrans({"η": "eta", "ε": "eps", "σ": "sigma", "ᾱ": "alpha_bar", "→": "->", "×": "x", "−": "-"})


def drawable(text: str) -> str:
    return text.replace("x̂_0", "x0_hat").replace("x̂", "x_hat").translate(_SPELLED)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels (a word longer than the width stays whole)."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def compose_grid(images: list[Image.Image | None], columns: int, x_labels: list[str] | None = None,
                 y_labels: list[str] | None = None, legend: bool = True) -> Image.Image:
    """Cells row by row into one image; with legend, X labels above the columns and Y labels
    left of the rows. A None cell (never generated) is drawn as a grey square."""
    present = [image for image in images if image is not None]
    if not present:
        raise ValueError("compose_grid needs at least one image")
    width, height = present[0].size
    rows = math.ceil(len(images) / columns)
    font = label_font(width)
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_height = sum(font.getmetrics()) + 2
    x_labels = [drawable(t) for t in x_labels or []]
    y_labels = [drawable(t) for t in y_labels or []]
    x_lines = [_wrap(scratch, t, font, width - 2 * PAD) for t in x_labels] if legend else []
    left_width = 0
    y_lines: list[list[str]] = []
    if legend and y_labels:
        left_width = min(max(int(scratch.textlength(t, font=font)) for t in y_labels), max(width, 160)) + 2 * PAD
        y_lines = [_wrap(scratch, t, font, left_width - 2 * PAD) for t in y_labels]
    top_height = (max(len(lines) for lines in x_lines) * line_height + 2 * PAD) if x_lines else 0
    grid = Image.new("RGB", (left_width + columns * width, top_height + rows * height), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        box = (left_width + column * width, top_height + row * height)
        if image is None:
            draw.rectangle([box, (box[0] + width - 1, box[1] + height - 1)], fill=MISSING)
        else:
            grid.paste(image.convert("RGB").resize((width, height)) if image.size != (width, height) else image.convert("RGB"), box)
    for column, lines in enumerate(x_lines):
        centre_x = left_width + column * width + width / 2
        for n, line in enumerate(lines):
            draw.text((centre_x, PAD + n * line_height), line, fill=TEXT, font=font, anchor="ma")
    for row, lines in enumerate(y_lines):
        centre_y = top_height + row * height + height / 2 - len(lines) * line_height / 2
        for n, line in enumerate(lines):
            draw.text((left_width - PAD, centre_y + n * line_height), line, fill=TEXT, font=font, anchor="ra")
    return grid


def grid_image(plan: GridPlan, images: list[Image.Image | None], legend: bool = True) -> Image.Image:
    """The plan's grid from its cells' images (None where a cell was not generated)."""
    return compose_grid(images, plan.columns, plan.x.labels if plan.x else None,
                        plan.y.labels if plan.y else None, legend)


def grid_infotext(plan: GridPlan, cell_infotext: str) -> str:
    """A1111's grid infotext: a cell's parameters plus the axes (the per-axis fields of that
    cell stand for the whole grid; PNG info reads it like any image's)."""
    params = parse_infotext(cell_infotext)
    prompt, negative = params.pop("Prompt", ""), params.pop("Negative prompt", "")
    version = params.pop("Version", None)
    params["Script"] = "X/Y plot"
    for name, values in (("X", plan.x), ("Y", plan.y)):
        if values is not None:
            params[f"{name} Type"] = values.axis.name
            params[f"{name} Values"] = values.text
    params["Version"] = version
    return build_infotext(prompt, negative, params)


CELLS_KEY = "xy_grid_cells"  # PNG text chunk: every cell's infotext, as a JSON list (null: not generated)


def cells_chunk(infotexts: list[str | None]) -> str:
    return json.dumps(infotexts, ensure_ascii=False)
