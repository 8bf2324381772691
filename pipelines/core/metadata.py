"""A1111-style infotext: the generation parameters written into a PNG's ``parameters`` text
chunk, and parsed back (so images from this app, A1111, Forge or SD.Next read the same).

Format:
    <prompt>
    Negative prompt: <negative prompt>
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model: demo, ...
Values holding a comma, colon or quote are written JSON-quoted, as A1111 does.
"""
from __future__ import annotations

import json
import re
from io import BytesIO
from pathlib import Path

from PIL import Image, PngImagePlugin

from .requests import FIELDS
from .schedulers import SCHEDULER_NAMES

PNG_KEY = "parameters"
# key: value pairs of the last line; a value is either JSON-quoted or runs to the next comma.
_PAIR = re.compile(r'\s*([\w][\w \-/()+.]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def _quote(value) -> str:
    text = str(value)
    if any(c in text for c in ',:"\n'):
        return json.dumps(text, ensure_ascii=False)
    return text


def _format_number(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def build_infotext(prompt: str, negative_prompt: str, params: dict) -> str:
    """params: ordered mapping of 'Steps', 'Sampler', … → value; None values are left out."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    pairs = [f"{k}: {_quote(_format_number(v))}" for k, v in params.items() if v is not None]
    lines.append(", ".join(pairs))
    return "\n".join(lines)


def parse_infotext(text: str) -> dict:
    """Infotext → {'Prompt', 'Negative prompt', and every key of the parameter line}.

    Values stay strings (as written); callers convert what they use.
    """
    lines = text.strip().split("\n")
    params_line = ""
    if lines and _PAIR.match(lines[-1]) and "Steps:" in lines[-1]:
        params_line = lines.pop()
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].lstrip()
        (negative_lines if in_negative else prompt_lines).append(line)
    result = {"Prompt": "\n".join(prompt_lines).strip(), "Negative prompt": "\n".join(negative_lines).strip()}
    for key, value in _PAIR.findall(params_line):
        value = value.strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                value = value[1:-1]
        result[key.strip()] = value
    return result


def png_bytes(image: Image.Image, infotext: str, extra: dict[str, str] | None = None) -> bytes:
    """PNG with the infotext, plus any extra text chunks (an X/Y grid's cell infotexts)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_KEY, infotext)
    for key, text in (extra or {}).items():
        info.add_text(key, text)
    buffer = BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save_png(image: Image.Image, infotext: str, path: Path) -> Path:
    path.write_bytes(png_bytes(image, infotext))
    return path


def read_infotext(image: Image.Image) -> str | None:
    """The parameters text of an opened image (PNG text chunk, or EXIF UserComment as A1111
    writes into JPEG/WebP), or None when the image carries none."""
    text = image.info.get(PNG_KEY)
    if isinstance(text, str):
        return text
    exif = image.getexif().get_ifd(0x8769).get(0x9286) if hasattr(image, "getexif") else None
    if isinstance(exif, bytes):
        # UserComment: 8-byte charset header, then the text (A1111 writes UNICODE = UTF-16BE).
        header, body = exif[:8], exif[8:]
        encoding = "utf-16-be" if header.startswith(b"UNICODE") else "utf-8"
        return body.decode(encoding, errors="replace").strip("\x00") or None
    return None


def infotext_to_fields(parsed: dict, scheduler_names=SCHEDULER_NAMES) -> tuple[dict, list[str]]:
    """Parsed infotext → request field values by name (every declared field with an
    infotext key, pipelines/core/requests.py), plus notes on what could not be taken over (an
    unknown sampler, say). "Size: WxH" gives width and height (A1111's Size-1, Size-2)."""
    notes: list[str] = []
    parsed = dict(parsed)
    for key in ("Size", "Hires resize", "Seed resize from"):  # "WxH" → its declared halves
        if re.fullmatch(r"\d+x\d+", parsed.get(key, "").strip()):
            parsed[f"{key}-1"], parsed[f"{key}-2"] = parsed[key].strip().split("x")
    fields: dict = {}
    for name, declared in FIELDS.items():
        if declared.infotext in parsed and name != "scheduler":
            value = declared.parse(parsed[declared.infotext])
            if value is not None:
                fields[name] = value
    # Absent keys mean off (a variation or hires fix left in the widgets must not linger).
    fields.setdefault("subseed_strength", 0.0)
    fields["enable_hr"] = any(k in parsed for k in ("Hires upscale", "Hires resize", "Hires upscaler", "Hires steps"))
    if fields["enable_hr"]:
        fields.setdefault("hr_second_pass_steps", 0)
        fields.setdefault("hr_resize_x", 0)
        fields.setdefault("hr_resize_y", 0)
    if "Steps" in parsed and "Clip skip" not in parsed:
        fields["clip_skip"] = 1  # A1111 writes Clip skip only when it is not 1
    if "Steps" in parsed and "Turbo" not in parsed:
        fields["turbo"] = "Off"  # written only when on: a lossy option left on must not linger
    if "Steps" in parsed and "Token merging ratio" not in parsed:
        fields["token_merging"] = 0.0  # A1111 writes it only when on, as we do
    sampler = parsed.get("Sampler")
    if sampler:
        # A1111 ≥ 1.9 writes the schedule separately: "Sampler: DPM++ 2M, Schedule type: Karras".
        schedule = parsed.get("Schedule type", "")
        candidates = [f"{sampler} {schedule}".strip(), sampler] if schedule and schedule != "Automatic" else [sampler]
        match = next((c for c in candidates if c in scheduler_names), None)
        if match:
            fields["scheduler"] = match
        else:
            notes.append(f"Sampler {candidates[0]!r} is not offered here; the scheduler was left as it was.")
    return fields, notes
