"""A1111 prompt syntax: emphasis, escapes, unbalanced brackets and BREAK parse as A1111's
parse_prompt_attention does (its docstring's examples first, then the rules they imply)."""
from __future__ import annotations

import pytest

from pipelines.core.prompt_syntax import BREAK, LoraTag, parse_attention, parse_prompt

B = ("BREAK", -1.0)

CASES = [
    # A1111's documented examples (modules/prompt_parser.py, parse_prompt_attention)
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.3 * 1.1 * 1.1), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.1 ** 4), (".", 1.1)]),
    # nesting and explicit weights
    ("((word))", [("word", 1.1 * 1.1)]),
    ("(word:1.2)", [("word", 1.2)]),
    ("(word: 1.2 )", [("word", 1.2)]),
    ("((word:1.5))", [("word", 1.5 * 1.1)]),
    ("(a (b:2) c)", [("a ", 1.1), ("b", 2.2), (" c", 1.1)]),
    ("(word:0)", [("word", 0.0)]),
    ("(word:-1)", [("word", -1.0)]),
    # de-emphasis
    ("[word]", [("word", 1 / 1.1)]),
    ("[[word]]", [("word", 1 / 1.1 / 1.1)]),
    ("a [b (c)]", [("a ", 1.0), ("b ", 1 / 1.1), ("c", 1.1 / 1.1)]),
    # escapes
    ("\\(a\\) \\[b\\]", [("(a) [b]", 1.0)]),
    ("\\\\(a)", [("\\", 1.0), ("a", 1.1)]),
    ("a \\ b", [("a \\ b", 1.0)]),
    # unbalanced: an open bracket acts to the end; a stray closing one is text
    ("a (b", [("a ", 1.0), ("b", 1.1)]),
    ("a [b", [("a ", 1.0), ("b", 1 / 1.1)]),
    ("a) b", [("a) b", 1.0)]),
    ("a] b", [("a] b", 1.0)]),
    ("a:1.2) b", [("a:1.2) b", 1.0)]),
    ("(a:x)", [("a:x", 1.1)]),
    ("((a)", [("a", 1.1 * 1.1)]),
    # BREAK: a whole word in capitals
    ("a BREAK b", [("a", 1.0), B, ("b", 1.0)]),
    ("a, BREAK, b", [("a,", 1.0), B, (", b", 1.0)]),
    ("aBREAKb break", [("aBREAKb break", 1.0)]),
    # (A1111 also scales the marker inside brackets, after which it reads BREAK as a word; kept a break here)
    ("(a BREAK b)", [("a", 1.1), B, ("b", 1.1)]),
    # nothing
    ("", [("", 1.0)]),
    ("()", [("", 1.0)]),
]


@pytest.mark.parametrize("text, expected", CASES, ids=[c[0] or "empty" for c in CASES])
def test_attention_parse_matches_a1111(text, expected):
    got = [(s.text, s.weight) for s in parse_attention(text)]
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], rel=1e-12)
    assert [s.is_break for s in parse_attention(text)] == [e == B for e in expected]


def test_a1111_docstring_weights_are_reproduced_to_the_last_bit():
    # A1111 multiplies in place as brackets close; the same order gives the same floats.
    weights = [s.weight for s in parse_attention("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")]
    assert weights[1] == 1.5730000000000004 and weights[7] == 1.4641000000000006


def test_parse_prompt_takes_lora_tags_out_before_emphasis():
    parsed = parse_prompt("a (red:1.2) circle <lora:shapes:0.5> BREAK blue")
    assert parsed.loras == (LoraTag("shapes", 0.5),)
    assert [(s.text, s.weight) for s in parsed.segments] == [("a ", 1.0), ("red", 1.2), (" circle", 1.0),
                                                             ("BREAK", -1.0), ("blue", 1.0)]
    assert parsed.segments[3] is BREAK and parsed.has_emphasis
    assert not parse_prompt("(red:1.0) circle").has_emphasis
