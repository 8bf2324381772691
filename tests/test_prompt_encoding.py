"""The prompt engine on a tiny SD pipeline (real CLIP tokenizer, tiny text encoder): 77-token
chunks, A1111 emphasis (multiply, then restore the mean), BREAK, comma word-wrap, negative
padding, clip skip, textual-inversion words."""
from __future__ import annotations

import pytest
import torch

from pipelines.prompt_encoding import count_tokens, encode_prompts, tokenize
from pipelines.core.prompt_syntax import parse_prompt
from pipelines.core.prompt_tokens import CHUNK
from tiny_sd import tiny_pipeline


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def pipe_with_mean():
    """A bare LayerNorm gives every token a mean of 0; real CLIP's learned bias does not.
    Give the final norm a bias so the chunk mean is a real number to restore."""
    p = tiny_pipeline()
    with torch.no_grad():
        p.text_encoder.final_layer_norm.bias.fill_(0.3)
    return p


def encode(pipe, prompt, negative="", clip_skip=1, cfg=True):
    return encode_prompts(pipe, prompt, negative, clip_skip, cfg, device="cpu")


def words(n: int) -> str:
    """n one-token words."""
    return " ".join(["cat"] * n)


def test_a_short_prompt_encodes_exactly_as_diffusers_does(pipe):
    ours = encode(pipe, "a red circle", "blurry")
    cond, uncond = pipe.encode_prompt("a red circle", "cpu", 1, True, "blurry")
    assert ours.cond.shape == (1, 77, 32)
    assert torch.equal(ours.cond, cond) and torch.equal(ours.uncond, uncond)


@pytest.mark.parametrize("tokens, chunks", [(1, 1), (75, 1), (76, 2), (150, 2), (151, 3)])
def test_prompts_are_cut_into_77_token_chunks(pipe, tokens, chunks):
    embeddings = encode(pipe, words(tokens), cfg=False)
    assert embeddings.cond.shape == (1, 77 * chunks, 32) and embeddings.uncond is None
    tokenized = tokenize(pipe, parse_prompt(words(tokens)))
    bos, eos = pipe.tokenizer.bos_token_id, pipe.tokenizer.eos_token_id
    assert all(c.tokens[0] == bos and eos in c.tokens and len(c.tokens) == 77 for c in tokenized.chunks)
    assert count_tokens(pipe, words(tokens)) == (tokens, 75 * chunks)


def test_words_past_the_first_chunk_change_the_embedding_and_leave_the_first_chunk_alone(pipe):
    a, b = encode(pipe, words(80) + " red", cfg=False).cond, encode(pipe, words(80) + " blue", cfg=False).cond
    assert torch.equal(a[:, :77], b[:, :77]) and not torch.equal(a[:, 77:], b[:, 77:])


def test_break_pads_the_chunk_and_starts_another(pipe):
    tokenized = tokenize(pipe, parse_prompt("a red circle BREAK blue"))
    assert len(tokenized.chunks) == 2
    first = tokenized.chunks[0].tokens
    assert first[1:5] == pipe.tokenizer("a red circle", add_special_tokens=False).input_ids + [pipe.tokenizer.eos_token_id]
    assert tokenized.chunks[1].tokens[1] == pipe.tokenizer.convert_tokens_to_ids("blue</w>")
    assert encode(pipe, "a red circle BREAK blue", cfg=False).cond.shape == (1, 154, 32)
    assert torch.equal(encode(pipe, "a red circle BREAK blue", cfg=False).cond[:, :77],
                       encode(pipe, "a red circle", cfg=False).cond)


def test_a_full_chunk_moves_the_words_after_its_last_comma_to_the_next(pipe):
    # 70 words, a comma, then 10 more: token 76 would split the last phrase, so all of it moves.
    tokenized = tokenize(pipe, parse_prompt(words(70) + ", " + "dog " * 10))
    first, second = tokenized.chunks[0].tokens, tokenized.chunks[1].tokens
    comma = pipe.tokenizer.convert_tokens_to_ids(",</w>")
    dog = pipe.tokenizer.convert_tokens_to_ids("dog</w>")
    assert first[71] == comma and dog not in first
    assert second[1:11] == [dog] * 10
    assert tokenized.token_count == 75 + 10  # A1111 counts the wrapped chunk as full


def test_emphasis_scales_the_tokens_then_restores_the_chunk_mean(pipe_with_mean):
    plain = encode(pipe_with_mean, "a red circle", cfg=False).cond
    strong = encode(pipe_with_mean, "a (red:1.5) circle", cfg=False).cond
    assert not torch.equal(plain, strong)
    assert strong.mean().item() == pytest.approx(plain.mean().item(), rel=1e-5)
    # the weighted token grew against its neighbours: z·w·(mean ratio)
    ratio = plain.mean() / (plain * torch.tensor([1, 1, 1.5] + [1] * 74)[None, :, None]).mean()
    assert torch.allclose(strong[0, 2], plain[0, 2] * 1.5 * ratio, atol=1e-5)
    assert torch.allclose(strong[0, 1], plain[0, 1] * ratio, atol=1e-5)


def test_weight_one_is_the_plain_prompt_bit_for_bit(pipe_with_mean):
    assert torch.equal(encode(pipe_with_mean, "a (red:1.0) circle").cond, encode(pipe_with_mean, "a red circle").cond)


def test_a_shorter_negative_prompt_is_padded_with_empty_chunks(pipe):
    embeddings = encode(pipe, words(100), "blurry")
    assert embeddings.cond.shape == embeddings.uncond.shape == (1, 154, 32)
    empty = encode(pipe, "", cfg=False).cond
    assert torch.equal(embeddings.uncond[:, :77], encode(pipe, "blurry", cfg=False).cond)
    assert torch.equal(embeddings.uncond[:, 77:], empty)
    # and the other way round: a long negative pads the prompt
    other = encode(pipe, "red", words(160))
    assert other.cond.shape == other.uncond.shape == (1, 231, 32)
    assert torch.equal(other.cond[:, 154:], empty)


def test_clip_skip_2_is_the_penultimate_layer_through_the_final_norm(pipe):
    ids = pipe.tokenizer("a red circle", padding="max_length", max_length=77, return_tensors="pt").input_ids
    encoder = pipe.text_encoder
    with torch.no_grad():
        expected = encoder.final_layer_norm(encoder(ids, output_hidden_states=True).hidden_states[-2])
    skipped = encode(pipe, "a red circle", clip_skip=2).cond
    assert torch.equal(skipped, expected)
    assert not torch.equal(skipped, encode(pipe, "a red circle").cond)
    # more than the encoder's layers: the deepest skip it has (the tiny encoder has 2 layers)
    assert torch.equal(encode(pipe, "a red circle", clip_skip=12).cond, encode(pipe, "a red circle", clip_skip=2).cond)


def test_a_multi_vector_embedding_word_expands_and_takes_its_weight():
    p = tiny_pipeline()
    p.load_textual_inversion({"<heart>": torch.randn(3, 32, generator=torch.Generator().manual_seed(0))}, token="<heart>")
    tokenized = tokenize(p, parse_prompt("a (<heart>:1.3) circle"))
    ids = [p.tokenizer.convert_tokens_to_ids(t) for t in ("<heart>", "<heart>_1", "<heart>_2")]
    assert tokenized.chunks[0].tokens[2:5] == ids and tokenized.chunks[0].weights[2:5] == [1.3] * 3
    assert not torch.equal(encode(p, "a <heart> circle").cond, encode(p, "a circle").cond)
    # never split across chunks: 74 words leave room for 1 token, so all 3 vectors go to chunk 2
    split = tokenize(p, parse_prompt(words(74) + " <heart>"))
    assert ids[0] not in split.chunks[0].tokens and split.chunks[1].tokens[1:4] == ids
