"""How ``engram route run`` shows a generate route's answer."""

from __future__ import annotations

from engram.router.cli import _answer_lines


def test_a_one_line_answer_sits_beside_its_label():
    assert _answer_lines("Canberra.") == "  answer: Canberra."


def test_a_longer_answer_is_indented_beneath_its_label():
    assert _answer_lines("Two things:\n- milk\n\n- bread") == "  answer:\n    Two things:\n    - milk\n\n    - bread"
