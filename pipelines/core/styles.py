"""Prompt styles: saved prompt / negative prompt pairs, in A1111's styles.csv format.

    name,prompt,negative_prompt
    Cinematic,"{prompt}, film grain, 35mm","cartoon, drawing"
    Watercolor,"watercolor painting",

Applying a style puts the user's prompt where the style says `{prompt}`, or else appends the
style's text after it with ", " (A1111's merge rule); the negative prompts merge the same way.
Several styles apply in order. No torch, no gradio: text in, text out.
"""
from __future__ import annotations

import csv
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import RequestError

PLACEHOLDER = "{prompt}"
MAX_STYLES = 1000  # an imported file is attacker-sized: bound what one session holds
MAX_FIELD = 10_000  # characters per prompt in a style
MAX_FILE_BYTES = 2_000_000


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def merge(style_text: str, text: str) -> str:
    """A1111's merge_prompts: the style's {prompt} becomes the text; without it, the style is
    appended after the text (either may be empty)."""
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, text)
    return ", ".join(part for part in (text.strip(), style_text.strip()) if part)


def apply_styles(prompt: str, negative: str, styles: list[Style]) -> tuple[str, str]:
    for style in styles:
        prompt, negative = merge(style.prompt, prompt), merge(style.negative_prompt, negative)
    return prompt, negative


def parse_csv(text: str) -> list[Style]:
    """styles.csv text → styles, in file order. A1111's header is name,prompt,negative_prompt
    (older files lack negative_prompt); rows without a name are skipped; later rows with the
    same name replace earlier ones."""
    if len(text) > MAX_FILE_BYTES:
        raise RequestError("The styles file is too large (over 2 MB).")
    rows = csv.DictReader(io.StringIO(text.lstrip("\ufeff")), skipinitialspace=True)
    if not rows.fieldnames or "name" not in [f.strip().lower() for f in rows.fieldnames]:
        raise RequestError("A styles file needs A1111's header line: name,prompt,negative_prompt.")
    styles: dict[str, Style] = {}
    for row in rows:
        row = {(k or "").strip().lower(): (v or "") if isinstance(v, str) else "" for k, v in row.items()}
        name = row.get("name", "").strip()
        if not name:
            continue
        if len(styles) >= MAX_STYLES:
            raise RequestError(f"A styles file may hold at most {MAX_STYLES} styles.")
        prompt, negative = row.get("prompt", ""), row.get("negative_prompt", "")
        if len(name) > 200 or len(prompt) > MAX_FIELD or len(negative) > MAX_FIELD:
            raise RequestError(f"Style {name[:40]!r} is too long (names up to 200 characters, prompts up to {MAX_FIELD}).")
        styles[name] = Style(name, prompt, negative)
    return list(styles.values())


def to_csv(styles: list[Style]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["name", "prompt", "negative_prompt"])
    for style in styles:
        writer.writerow([style.name, style.prompt, style.negative_prompt])
    return out.getvalue()


def load(path: str | Path) -> list[Style]:
    """The styles of a file; none when it does not exist yet."""
    path = Path(path)
    if not path.is_file():
        return []
    return parse_csv(path.read_text(encoding="utf-8-sig"))


def save(path: str | Path, styles: list[Style]) -> None:
    """Write atomically (a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".styles-", suffix=".csv")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(to_csv(styles))
    os.replace(tmp, path)


def upsert(styles: list[Style], style: Style) -> list[Style]:
    """styles with style added, or replacing the one of the same name in place."""
    if not style.name.strip():
        raise RequestError("Give the style a name.")
    names = [s.name for s in styles]
    if style.name in names:
        return [style if s.name == style.name else s for s in styles]
    return [*styles, style]
