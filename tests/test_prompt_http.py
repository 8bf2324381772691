"""A1111 prompt syntax and clip skip through the real server (`python app.py` on the tiny
model), driven over HTTP: emphasis, chunking past 75 tokens, clip skip and its read-back."""
from __future__ import annotations

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

@pytest.fixture(scope="module")
def client(app_server):
    return Client(app_server.url, verbose=False)


def txt2img(client, prompt, clip_skip=1, negative=""):
    _, gallery, notes, infotext = client.predict(prompt=prompt, negative_prompt=negative, seed=7, steps=4, width=64,
                                                 height=64, clip_skip=clip_skip, api_name="/txt2img")
    return np.asarray(Image.open(gallery[0]["image"])), notes, infotext, gallery[0]["image"]


def test_emphasis_changes_the_image_and_weight_one_is_the_plain_prompt(client):
    plain = txt2img(client, "a red circle")[0]
    assert not np.array_equal(txt2img(client, "a (red:1.5) circle")[0], plain)
    assert np.array_equal(txt2img(client, "a (red:1.0) circle")[0], plain)


def test_words_after_token_77_change_the_image_and_nothing_is_truncated(client):
    filler = ", ".join(["a small grey square"] * 20)  # 99 tokens: the words below land in chunk 2
    red, notes, _, _ = txt2img(client, f"{filler}, red circle")
    blue = txt2img(client, f"{filler}, blue circle")[0]
    assert not np.array_equal(red, blue)
    assert "chunks of 75" in notes and "truncat" not in notes.lower() and "Ignored" not in notes


def test_clip_skip_2_changes_the_image_and_png_info_reads_it_back(client):
    plain, _, plain_infotext, _ = txt2img(client, "a red circle")
    skipped, _, infotext, path = txt2img(client, "a red circle", clip_skip=2)
    assert not np.array_equal(skipped, plain)
    assert "Clip skip: 2" in infotext and "Clip skip" not in plain_infotext  # A1111 omits the default 1
    _, parsed = client.predict(handle_file(path), api_name="/png_info")
    assert parsed["Clip skip"] == "2"


def test_an_out_of_range_clip_skip_gets_a_clear_message(client):
    from gradio_client.exceptions import AppError

    # Gradio's slider checks its range first; the request object says the same for other callers
    with pytest.raises(AppError, match="(Clip skip must be between 1 and 12|greater than maximum value 12)"):
        client.predict(prompt="a", steps=2, width=64, height=64, clip_skip=13, api_name="/txt2img")


def test_the_manager_counts_tokens_as_a1111_shows_them(manager):
    assert manager.count_tokens("a red circle") == (3, 75)
    assert manager.count_tokens("(a red circle:1.3) <lora:x:1>") == (3, 75)  # syntax and tags are not tokens
    assert manager.count_tokens(" ".join(["cat"] * 80)) == (80, 150)
    assert manager.count_tokens("<lora:x:nope>") is None  # the request will say what is wrong


def test_every_backend_counts_tokens_without_a_job(manager):
    from serving.fair import FairGate
    from serving.pool import ManagerPool
    from serving.zerogpu import ZeroGPUBackend

    for backend in (ManagerPool([manager]), ZeroGPUBackend(manager), FairGate(manager)):
        assert backend.count_tokens("a (red:1.2) circle BREAK blue") == (76, 150)
