"""Prompt styles in A1111's styles.csv format: parsing, merging, saving."""
from __future__ import annotations

import pytest

from pipelines.core.errors import RequestError
from pipelines.core.styles import Style, apply_styles, load, merge, parse_csv, save, to_csv, upsert

A1111_FILE = '''name,prompt,negative_prompt
Cinematic,"{prompt}, cinematic still, film grain","cartoon, drawing"
"Oil, thick","oil painting, impasto",
Empty,,
,orphan without a name,
'''


def test_an_a1111_styles_file_parses_with_quoted_commas_and_empty_fields():
    styles = parse_csv(A1111_FILE)
    assert [s.name for s in styles] == ["Cinematic", "Oil, thick", "Empty"]
    assert styles[0] == Style("Cinematic", "{prompt}, cinematic still, film grain", "cartoon, drawing")
    assert styles[1].negative_prompt == "" and styles[2] == Style("Empty")


def test_an_old_file_without_negative_prompts_and_a_bom_parses():
    assert parse_csv("\ufeffname,prompt\nA,red\n") == [Style("A", "red", "")]


def test_a_later_row_with_the_same_name_replaces_the_earlier():
    assert parse_csv("name,prompt,negative_prompt\nA,one,\nA,two,\n") == [Style("A", "two", "")]


@pytest.mark.parametrize("text", ["just some text\nwithout a header", "", "prompt,negative_prompt\nx,y\n"])
def test_a_file_without_the_name_column_is_a_clear_error(text):
    with pytest.raises(RequestError, match="name,prompt,negative_prompt"):
        parse_csv(text)


def test_oversized_files_and_fields_are_refused():
    with pytest.raises(RequestError, match="too long"):
        parse_csv("name,prompt\nA," + "x" * 20_000 + "\n")
    with pytest.raises(RequestError, match="at most"):
        parse_csv("name,prompt\n" + "".join(f"s{i},p\n" for i in range(1001)))


@pytest.mark.parametrize("style, text, merged", [
    ("{prompt}, film grain", "a cat", "a cat, film grain"),  # the placeholder takes the prompt
    ("masterpiece, {prompt}, {prompt}", "a cat", "masterpiece, a cat, a cat"),  # every occurrence
    ("film grain", "a cat", "a cat, film grain"),  # appended after ", "
    ("film grain", "  ", "film grain"),  # nothing to join to
    ("", "a cat", "a cat"),
])
def test_merge_follows_a1111(style, text, merged):
    assert merge(style, text) == merged


def test_several_styles_apply_in_order_to_both_prompts():
    styles = [Style("A", "{prompt}, sharp", "blurry"), Style("B", "in the rain", "")]
    assert apply_styles("a cat", "ugly", styles) == ("a cat, sharp, in the rain", "ugly, blurry")


def test_saved_styles_read_back_the_same(tmp_path):
    styles = [Style("Quote \"x\"", 'a, "b"\nnew line', "c"), Style("Plain", "p", "")]
    path = tmp_path / "sub" / "styles.csv"
    save(path, styles)
    assert load(path) == styles and path.read_text().startswith("name,prompt,negative_prompt\n")
    assert parse_csv(to_csv(styles)) == styles
    assert load(tmp_path / "missing.csv") == []


def test_upsert_replaces_in_place_or_appends_and_wants_a_name():
    styles = [Style("A", "1"), Style("B", "2")]
    assert upsert(styles, Style("A", "3")) == [Style("A", "3"), Style("B", "2")]
    assert upsert(styles, Style("C")) == [*styles, Style("C")]
    with pytest.raises(RequestError, match="name"):
        upsert(styles, Style("  "))
