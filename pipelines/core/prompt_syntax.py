"""A1111 prompt syntax, parsed once in the request layer (torch-free), the same for the UI,
the REST API, X/Y grids and PNG info.

Emphasis and BREAK: ``parse_attention`` / ``parse_prompt`` below (A1111's semantics).

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


# --------------------------------------------------------------------------- emphasis, BREAK
# A1111's attention syntax (modules/prompt_parser.py, parse_prompt_attention), same semantics:
#   (text) ×1.1 · (text:w) ×w · [text] ÷1.1 · nesting multiplies · \( \) \[ \] \\ are literals
#   · a bracket left open applies to the rest of the prompt · a stray closing bracket is text
#   · BREAK (a whole word, capitals) ends the current 75-token chunk.
ROUND, SQUARE = 1.1, 1 / 1.1

_ATTENTION_TOKEN = re.compile(r"""
    \\[()\[\]\\]          # an escaped bracket or backslash: the character itself
  | \\                    # a lone backslash: text
  | \(                    # opens round emphasis
  | \[                    # opens square de-emphasis
  | :\s*([+-]?[.\d]+)\s*\)  # ':1.2)' closes round brackets with an explicit weight
  | \)                    # closes round
  | \]                    # closes square
  | [^\\()\[\]:]+         # plain text
  | :                     # a colon that is not a weight: text
""", re.VERBOSE)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.DOTALL)


@dataclass(frozen=True)
class Segment:
    """A run of prompt text and the factor its token embeddings are multiplied by. The BREAK
    marker is a segment of its own (``is_break``)."""

    text: str
    weight: float = 1.0
    is_break: bool = False


BREAK = Segment("BREAK", -1.0, is_break=True)


def parse_attention(text: str) -> list[Segment]:
    """Prompt text → segments with their weights, adjacent equal weights merged (A1111's
    parse_prompt_attention, e.g. 'an (important) word' → 'an ' 1.0, 'important' 1.1, ' word' 1.0).
    Never fails: unbalanced brackets are closed at the end of the prompt or read as text."""
    pieces: list[list] = []  # [text, weight, is_break]; weights change in place as brackets close
    open_round: list[int] = []  # index in pieces where each open bracket started
    open_square: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            if not piece[2]:  # A1111 also scales a BREAK inside brackets, which then stops acting
                piece[1] *= factor

    for match in _ATTENTION_TOKEN.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\") and len(token) == 2:
            pieces.append([token[1], 1.0, False])
        elif token == "(":
            open_round.append(len(pieces))
        elif token == "[":
            open_square.append(len(pieces))
        elif weight is not None and open_round:
            scale_from(open_round.pop(), float(weight))
        elif token == ")" and open_round:
            scale_from(open_round.pop(), ROUND)
        elif token == "]" and open_square:
            scale_from(open_square.pop(), SQUARE)
        else:  # text, or a closing bracket with nothing open
            for index, part in enumerate(_BREAK.split(token)):
                if index:
                    pieces.append([BREAK.text, BREAK.weight, True])
                pieces.append([part, 1.0, False])
    for start in open_round:  # brackets never closed act up to the end
        scale_from(start, ROUND)
    for start in open_square:
        scale_from(start, SQUARE)

    merged: list[list] = []
    for piece in pieces:
        if merged and not piece[2] and not merged[-1][2] and merged[-1][1] == piece[1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    segments = [BREAK if is_break else Segment(t, w) for t, w, is_break in merged]
    return segments or [Segment("", 1.0)]


@dataclass(frozen=True)
class ParsedPrompt:
    """A prompt as the engine needs it: weighted text segments (BREAKs included) and the
    LoRA tags taken out of the text."""

    segments: tuple[Segment, ...]
    loras: tuple[LoraTag, ...] = ()

    @property
    def has_emphasis(self) -> bool:
        return any(s.weight != 1.0 for s in self.segments if not s.is_break)


def parse_prompt(text: str) -> ParsedPrompt:
    """The one parse of a prompt: LoRA tags out, then emphasis and BREAK."""
    clean, loras = extract_loras(text)
    return ParsedPrompt(tuple(parse_attention(clean)), loras)
