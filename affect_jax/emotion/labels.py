"""Label parsing exactly as the official evaluation does it, and <think> / <answer> extraction.

The official evaluation turns a cell such as "[happy, 'excited']" or "shocked,care" into a
label list with one function (PAPER_NOTES.md section 4, step 1): strip ONE leading "[" and ONE
trailing "]" (no whitespace stripping first), split on commas and both quote characters, strip
every item, drop empty items; the metric then lowercases and strips each label again.

Completions of the R1 model look like "<think> ... </think><answer> a, b </answer>". The rules
below define how this project reads them (host metric and on-device reward use the same rules,
see affect_jax/rewards/terms/emotion_wheel.py):
- answer content: the text after the FIRST "<answer>" up to the first "</answer>" after it;
  no answer when either tag is missing. Its labels are `parse_labels(content)` (official rule,
  applied to the raw content: "<answer> [a]</answer>" yields "[a", which maps to nothing).
- think content: the same with "<think>" / "</think>".
- format: 1 iff each of the four tags occurs exactly once, in the order <think> </think>
  <answer> </answer>, only whitespace lies before <think>, between </think> and <answer> and
  after </answer>, and both contents hold a non-whitespace character.
- think labels: the maximal runs of "word characters" of the lowercased think content (the
  characters of the wheel's surface forms other than the space, e.g. a-z, "-", "’") that are
  surface forms. Multi-word surface forms ("let down") are not looked for in <think>.
"""
from __future__ import annotations

import dataclasses
import re

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_SPLIT = re.compile("['\",]")


def string_to_list(cell) -> list[str]:
  """The official list parser: "[a, 'b']" -> ["a", "b"]; "" or None or NaN -> [].

  Args:
    cell: a str (a CSV cell, an <answer> content), None, a float NaN, or already a list.
  Returns:
    The items, stripped, empty ones dropped, case kept.
  """
  if cell is None:
    return []
  if isinstance(cell, (list, tuple)):
    return [str(item) for item in cell]
  if isinstance(cell, float) and cell != cell:
    return []
  text = str(cell)
  if text == "":
    return []
  if text[0] == "[":
    text = text[1:]
  if text[-1:] == "]":
    text = text[:-1]
  return [item.strip() for item in _SPLIT.split(text) if item.strip() not in ("", ",")]


def parse_labels(cell) -> list[str]:
  """Labels as the metric sees them: `string_to_list`, then lowercase and strip each."""
  return [item.lower().strip() for item in string_to_list(cell)]


def _find_after(text: str, tag: str, start: int) -> int:
  return text.find(tag, start) if start >= 0 else -1


@dataclasses.dataclass(frozen=True)
class Completion:
  """A completion split by its tags. `None` contents mean the tag pair was not found."""
  think: str | None
  answer: str | None
  format_ok: bool


def split_completion(text: str) -> Completion:
  """Reads a "<think>...</think><answer>...</answer>" completion (rules in the module doc)."""
  contents = []
  for open_tag, close_tag in ((TAGS[0], TAGS[1]), (TAGS[2], TAGS[3])):
    start = text.find(open_tag)
    end = _find_after(text, close_tag, start + len(open_tag) if start >= 0 else -1)
    contents.append(text[start + len(open_tag):end] if start >= 0 and end >= 0 else None)
  think, answer = contents
  return Completion(think=think, answer=answer, format_ok=format_ok(text))


def format_ok(text: str) -> bool:
  """The format reward's test (module doc): tags once each, in order, only whitespace around."""
  if any(text.count(tag) != 1 for tag in TAGS):
    return False
  pos = [text.find(tag) for tag in TAGS]
  if not pos[0] < pos[1] < pos[2] < pos[3]:
    return False
  outside = (text[:pos[0]], text[pos[1] + len(TAGS[1]):pos[2]], text[pos[3] + len(TAGS[3]):])
  if any(part.strip() for part in outside):
    return False
  think = text[pos[0] + len(TAGS[0]):pos[1]]
  answer = text[pos[2] + len(TAGS[2]):pos[3]]
  return bool(think.strip()) and bool(answer.strip())


def think_words(think: str | None, word_chars: frozenset[str]) -> list[str]:
  """Maximal runs of `word_chars` in the lowercased think content, in order (may repeat)."""
  if not think:
    return []
  words, current = [], []
  for ch in think.lower():
    if ch in word_chars:
      current.append(ch)
    elif current:
      words.append("".join(current))
      current = []
  if current:
    words.append("".join(current))
  return words
