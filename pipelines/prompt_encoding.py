"""Prompt text → text-encoder embeddings, the way A1111 makes them (modules/sd_hijack_clip.py,
sd_emphasis.py), for every path that needs them: diffusers pipelines (prompt_embeds), RePaint,
the Diffusion lab.

- The prompt is parsed once (prompt_syntax.parse_prompt: emphasis, BREAK, LoRA tags out) and
  cut into 77-token chunks (prompt_tokens); each chunk is encoded on its own and the chunks
  are concatenated along the sequence, so nothing past 75 tokens is ignored.
- Emphasis: each chunk's token embeddings z are multiplied by their weights, then rescaled so
  the chunk's mean is what it was: z' = z·w · mean(z)/mean(z·w).
- Clip skip N (A1111): the hidden state N−1 layers before the last, through the final layer
  norm; 1 = the last layer's output as is.
- Cond and uncond must have the same length for CFG: the shorter one is padded with chunks of
  the empty prompt (A1111's "pad prompt/negative prompt to be same length").

It works over a list of (tokenizer, text encoder) pairs whose outputs are concatenated along
the features, so a model with two encoders (SDXL) reuses it; SD 1.x/2.x have one pair.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .core.prompt_syntax import ParsedPrompt, parse_prompt
from .core.prompt_tokens import CHUNK, TokenizedPrompt, tokenize_prompt

CHUNK_TOKENS = CHUNK + 2  # 77: BOS + 75 + EOS


def encoders_of(pipe) -> list[tuple]:
    """The pipeline's (tokenizer, text encoder) pairs: SD one, SDXL two (CLIP ViT-L, OpenCLIP bigG)."""
    pairs = [(pipe.tokenizer, pipe.text_encoder), (getattr(pipe, "tokenizer_2", None), getattr(pipe, "text_encoder_2", None))]
    return [(t, e) for t, e in pairs if t is not None and e is not None]


def is_xl(pipe) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None


def converter(pipe, tokenizer):
    """Textual-inversion words as the tokenizer knows them: diffusers expands a k-vector
    embedding's word into k added tokens (maybe_convert_prompt)."""
    convert = getattr(pipe, "maybe_convert_prompt", None)
    added = getattr(tokenizer, "added_tokens_encoder", {}) or {}
    # It only rewrites a word whose "word_1" was added too; skip the extra tokenising otherwise.
    multi_vector = any(f"{token}_1" in added for token in added)
    return (lambda text: convert(text, tokenizer)) if convert and multi_vector else (lambda text: text)


def tokenize(pipe, parsed: ParsedPrompt, tokenizer=None) -> TokenizedPrompt:
    tokenizer = tokenizer or pipe.tokenizer
    return tokenize_prompt(parsed, tokenizer, converter(pipe, tokenizer))


def effective_clip_skip(text_encoder, clip_skip: int) -> int:
    """Clip skip can skip at most all but one of the encoder's layers."""
    return max(1, min(int(clip_skip), int(text_encoder.config.num_hidden_layers)))


def apply_emphasis(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111's "Original" emphasis on one chunk (z: (1, 77, D), weights: (77,)): multiply each
    token's embedding by its weight, then restore the chunk's original mean. (Real CLIP
    encoders have a clearly non-zero mean; a mean of ~0 is left alone rather than divided by.)"""
    original = z.float()
    scaled = original * weights.to(original)[None, :, None]
    before, after = original.mean(), scaled.mean()
    tiny = 1e-6 * original.abs().mean()
    if before.abs() <= tiny or after.abs() <= tiny:
        return scaled.to(z.dtype)  # a mean of ~0 (a bare LayerNorm): the ratio would be noise
    return (scaled * (before / after)).to(z.dtype)


@torch.no_grad()
def encode_tokenized(tokenized: TokenizedPrompt, text_encoder, clip_skip: int, device, xl: bool = False,
                     pooled: list | None = None) -> torch.Tensor:
    """(1, 77·k, D): every chunk through the encoder (one batch), emphasis per chunk, then
    concatenated along the sequence. xl: SDXL reads the penultimate layer without the final
    layer norm (clip skip counts on from there); pooled: gets the first chunk's pooled,
    projected output (SDXL's second encoder conditions the UNet with it, as A1111)."""
    ids = torch.tensor([c.tokens for c in tokenized.chunks], device=device)
    skip = effective_clip_skip(text_encoder, clip_skip)
    if xl:
        out = text_encoder(ids, output_hidden_states=True)
        z = out.hidden_states[-min(skip + 1, len(out.hidden_states) - 1)]
        if pooled is not None:
            pooled.append(out[0][0:1])  # text_embeds of CLIPTextModelWithProjection
    elif skip == 1:
        z = text_encoder(ids)[0]
    else:
        hidden = text_encoder(ids, output_hidden_states=True).hidden_states[-skip]
        # transformers 5 flattened CLIPTextModel; 4.x keeps the layers under .text_model
        z = getattr(text_encoder, "text_model", text_encoder).final_layer_norm(hidden)
    chunks = []
    for index, chunk in enumerate(tokenized.chunks):
        piece = z[index:index + 1]
        if any(w != 1.0 for w in chunk.weights):  # all 1: left untouched, bit for bit
            piece = apply_emphasis(piece, torch.tensor(chunk.weights))
        chunks.append(piece)
    return torch.cat(chunks, dim=1).to(text_encoder.dtype)


@dataclass
class PromptEmbeddings:
    cond: torch.Tensor  # (1, 77·k, D)
    uncond: torch.Tensor | None  # same shape; None when CFG is off (no unconditional pass)
    pooled: torch.Tensor | None = None  # SDXL: (1, D2) pooled output of encoder 2 for cond …
    uncond_pooled: torch.Tensor | None = None  # … and uncond; None for SD


def _pad(z: torch.Tensor, chunks: int, empty) -> torch.Tensor:
    """z (1, 77·k, D) padded to `chunks` chunks with the empty prompt's chunk."""
    missing = chunks - z.shape[1] // CHUNK_TOKENS
    return torch.cat([z, empty().repeat(1, missing, 1)], dim=1) if missing > 0 else z


def encode_prompts(pipe, prompt: str, negative: str = "", clip_skip: int = 1, cfg: bool = True,
                   device=None) -> PromptEmbeddings:
    """The request's prompt and negative prompt as embeddings of equal length (the negative
    only with CFG on), through every encoder of the pipeline (features concatenated)."""
    device = device if device is not None else pipe._execution_device
    parsed = [parse_prompt(prompt)] + ([parse_prompt(negative or "")] if cfg else [])
    outputs: list[list[torch.Tensor]] = [[] for _ in parsed]
    xl = is_xl(pipe)
    pooled: list[torch.Tensor] = []
    for tokenizer, text_encoder in encoders_of(pipe):
        tokenized = [tokenize(pipe, p, tokenizer) for p in parsed]
        chunks = max(len(t.chunks) for t in tokenized)
        last = xl and text_encoder is pipe.text_encoder_2

        def empty() -> torch.Tensor:
            return encode_tokenized(tokenize(pipe, parse_prompt(""), tokenizer), text_encoder, clip_skip, device, xl)

        for output, t in zip(outputs, tokenized):
            z = encode_tokenized(t, text_encoder, clip_skip, device, xl, pooled if last else None)
            output.append(_pad(z, chunks, empty))
    cond, *uncond = [torch.cat(output, dim=-1) for output in outputs]
    return PromptEmbeddings(cond, uncond[0] if uncond else None, *(pooled + [None, None])[:2])


def count_tokens(pipe, text: str) -> tuple[int, int]:
    """(tokens, limit) as A1111's counter shows them: '80/150' = 80 tokens in 2 chunks."""
    tokenized = tokenize(pipe, parse_prompt(text))
    return tokenized.token_count, tokenized.limit
