"""A parsed prompt → 77-token chunks with a weight per token, as A1111 cuts them
(modules/sd_hijack_clip.py). Torch-free: it needs only a tokenizer, so the live token counter
uses it too.

Each chunk holds 75 prompt tokens between BOS and EOS (77, the CLIP context). BREAK pads the
current chunk and starts a new one. A chunk that fills up moves the words after its last
comma to the next chunk when that comma is within COMMA_BACKTRACK tokens of the end, so a
phrase is not cut in two. A textual-inversion word with several vectors is never split
across chunks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from .prompt_syntax import ParsedPrompt

CHUNK = 75  # prompt tokens per chunk; + BOS + EOS = 77
COMMA_BACKTRACK = 20  # A1111's "Prompt word wrap length limit" default


@dataclass
class PromptChunk:
    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)


@dataclass
class TokenizedPrompt:
    chunks: list[PromptChunk]  # each exactly CHUNK + 2 tokens
    token_count: int  # what A1111's counter shows: full chunks count 75 each, plus the last one's tokens

    @property
    def limit(self) -> int:
        """The counter's denominator: 75, 150, … (room in the chunks used so far)."""
        return math.ceil(max(self.token_count, 1) / CHUNK) * CHUNK


def _vector_runs(tokenizer, ids: list[int]) -> list[int]:
    """For each position, how many tokens from there belong to one textual-inversion word
    (diffusers expands a k-vector word to 'word word_1 … word_{k-1}'); 1 for ordinary tokens."""
    added = getattr(tokenizer, "added_tokens_encoder", {}) or {}
    if not added:
        return [1] * len(ids)
    names = {v: k for k, v in added.items()}
    runs = [1] * len(ids)
    for start, token in enumerate(ids):
        name = names.get(token)
        if name is None or (start and runs[start - 1] == 0):
            continue
        end = start + 1
        while end < len(ids) and names.get(ids[end]) == f"{name}_{end - start}":
            runs[end] = 0  # inside a run: kept with its start
            end += 1
        runs[start] = end - start
    return runs


def tokenize_prompt(parsed: ParsedPrompt, tokenizer, convert: Callable[[str], str] = lambda text: text,
                    backtrack: int = COMMA_BACKTRACK) -> TokenizedPrompt:
    """Chunks of token ids and weights. `convert` rewrites each segment's text before
    tokenising (the pipeline's maybe_convert_prompt: multi-vector embeddings expand)."""
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    comma = tokenizer.convert_tokens_to_ids(",</w>")  # (get_vocab() would copy all 49408 entries)
    comma = None if comma == tokenizer.unk_token_id else comma
    texts = [convert(s.text) if not s.is_break else "" for s in parsed.segments]
    tokenized = tokenizer(texts, truncation=False, add_special_tokens=False, verbose=False).input_ids

    chunks: list[PromptChunk] = []
    chunk = PromptChunk()
    count = 0
    last_comma = -1

    def close(is_last: bool = False) -> None:
        nonlocal chunk, count, last_comma
        count += len(chunk.tokens) if is_last else CHUNK
        room = CHUNK - len(chunk.tokens)
        # BOS, the tokens, EOS, then padding (SD 1.x pads with EOS, SD 2.x with its pad id)
        chunk.tokens = [start] + chunk.tokens + [end] + [pad] * room
        chunk.weights = [1.0] + chunk.weights + [1.0] * (room + 1)
        chunks.append(chunk)
        chunk, last_comma = PromptChunk(), -1

    for segment, ids in zip(parsed.segments, tokenized):
        if segment.is_break:
            close()
            continue
        runs = _vector_runs(tokenizer, ids)
        position = 0
        while position < len(ids):
            token, run = ids[position], min(max(runs[position], 1), CHUNK)
            if token == comma:
                last_comma = len(chunk.tokens)
            elif (backtrack and len(chunk.tokens) == CHUNK and last_comma != -1
                  and len(chunk.tokens) - last_comma <= backtrack):
                # Full, and a comma is near: the words after it move to the next chunk.
                moved = PromptChunk(chunk.tokens[last_comma + 1:], chunk.weights[last_comma + 1:])
                chunk.tokens, chunk.weights = chunk.tokens[:last_comma + 1], chunk.weights[:last_comma + 1]
                close()
                chunk = moved
            if len(chunk.tokens) + run > CHUNK:
                close()
            chunk.tokens += ids[position:position + run]
            chunk.weights += [segment.weight] * run
            position += run
    if chunk.tokens or not chunks:
        close(is_last=True)
    return TokenizedPrompt(chunks, count)
