"""Label parsing (official list rule) and the completion rules."""
import math

import pytest

from affect_jax.emotion import labels


@pytest.mark.parametrize("cell, expected", [
    ("[happy, excited]", ["happy", "excited"]),
    ("happy,excited", ["happy", "excited"]),
    ("happy, excited", ["happy", "excited"]),
    ("['happy', \"sad\"]", ["happy", "sad"]),
    ("[[happy]]", ["[happy]"]),              # only one bracket each side is removed
    (" [happy]", ["[happy"]),                # no strip before the bracket rule
    ("a,,b, ,", ["a", "b"]),
    ("Let Down", ["Let Down"]),              # multi-word labels stay whole, case kept
    ("", []), (None, []), (math.nan, []),
    ("[", []), ("]", []), ("[]", []),
])
def test_string_to_list(cell, expected):
  assert labels.string_to_list(cell) == expected


def test_parse_labels_lowercases_and_strips():
  assert labels.parse_labels("[ Happy ,\tSAD\n]") == ["happy", "sad"]


@pytest.mark.parametrize("text, think, answer, ok", [
    ("<think>x</think><answer>a</answer>", "x", "a", True),
    ("  <think> x </think>\n<answer> a </answer>\n", " x ", " a ", True),
    ("<think></think><answer>a</answer>", "", "a", False),          # empty think
    ("<think>x</think><answer> </answer>", "x", " ", False),         # empty answer
    ("<answer>a</answer><think>x</think>", "x", "a", False),         # wrong order
    ("<think>x</think>y<answer>a</answer>", "x", "a", False),        # text between
    ("<think>x</think><answer>a</answer>.", "x", "a", False),        # text after
    ("<think>x</think><answer>a<answer>b</answer>", "x", "a<answer>b", False),  # tag twice
    ("<think>x<answer>a</answer>", None, "a", False),                # unclosed think
    ("no tags at all", None, None, False),
    ("<answer>a", None, None, False),
])
def test_split_completion(text, think, answer, ok):
  c = labels.split_completion(text)
  assert (c.think, c.answer, c.format_ok) == (think, answer, ok)


def test_think_words():
  chars = frozenset("abcdefghijklmnopqrstuvwxyz-’")
  assert labels.think_words("He felt SAD, then half-happy (x2).", chars) == [
      "he", "felt", "sad", "then", "half-happy", "x"]
  assert labels.think_words(None, chars) == []
