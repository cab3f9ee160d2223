"""Emotion labels of a completion: from its <answer> span, or from free text by a rule.

  cell = answer_cell(completion)                       # "<answer>a, b</answer>" -> "a, b"
  matcher = RuleExtractor(tables, negations, window)   # tables: wheel.load_tables(ew_dir)
  cell = matcher.cell(free_text)                       # "He looks sad and let down." -> "sad, let down"

The rule (for models that answer in free text, or to read labels out of a whole R1 completion):
1. The four R1 tags (<think>, </think>, <answer>, </answer>) end a clause (rule 4); the text
   is lowercased. The whole text is read, <think> included.
2. Words are the maximal runs of the wheel's word characters (the characters of its surface
   forms other than the space: letters, '-', ...) and apostrophes; everything else separates
   words.
3. Scanning left to right, the longest run of consecutive words of one clause (up to the
   longest surface form, e.g. "let down", "taken aback") that is a surface form of the
   wheel's format table is a label, and the scan continues after it; a word that starts no
   surface form is skipped.
   Surface forms are the format table's keys, so inflections ("angrily", "worries") count.
4. A label is dropped when one of the `negation_window` words before it, in the same clause
   (clauses end at . , ; : ! ? brackets, tags and line breaks), is in `negations` ("not
   happy", "no anger", "never really angry" with window 2; not "Not now. Happy").
5. Labels keep the order of their first occurrence; repeats are dropped. "neutral" is kept
   when the wheel lists it (the metric drops it).
The labels are written as one cell "a, b", which the official list rule reads back unchanged
(surface forms hold no comma or quote).
"""
from __future__ import annotations

from typing import Iterable, Sequence

from affect_jax.emotion import labels as labels_lib
from affect_jax.emotion import wheel as wheel_lib

SEPARATOR = ", "
APOSTROPHES = frozenset("'’")     # always word characters, so "isn't" stays one word
CLAUSE_BREAKS = frozenset(".,;:!?()[]<>\n")   # a negation does not reach past these


def answer_cell(completion: str) -> str:
  """The <answer> content of an R1 completion ('' without one), read as the metric reads it."""
  answer = labels_lib.split_completion(completion).answer
  return answer if answer is not None else ""


def to_cell(labels: Iterable[str]) -> str:
  return SEPARATOR.join(labels)


class RuleExtractor:
  """Surface forms of an emotion wheel found in free text (module doc)."""

  def __init__(self, tables: wheel_lib.EwTables, negations: Sequence[str] = (),
               negation_window: int = 0):
    if negation_window < 0:
      raise ValueError(f"negation_window={negation_window}: must be >= 0.")
    self._chars = frozenset(tables.word_chars) | APOSTROPHES
    self._forms = {tuple(s.split()) for s in tables.surfaces if s.strip()}
    self._longest = max((len(f) for f in self._forms), default=1)
    self._negations = frozenset(n.lower() for n in negations)
    self._window = int(negation_window)

  def words(self, text: str) -> list[tuple[str, int]]:
    """Rules 1 and 2: the lowercased words of the text (tags removed), each with the index of
    its clause."""
    for tag in labels_lib.TAGS:
      text = text.replace(tag, ".")
    words, current, clause = [], [], 0
    for ch in text.lower() + " ":
      if ch in self._chars:
        current.append(ch)
        continue
      if current:
        words.append(("".join(current), clause))
        current = []
      clause += ch in CLAUSE_BREAKS
    return words

  def labels(self, text: str) -> list[str]:
    """Rules 3 to 5: the labels of one text, in order of first occurrence."""
    tagged = self.words(text or "")
    words = [w for w, _ in tagged]
    out, seen, i = [], set(), 0
    while i < len(words):
      for n in range(min(self._longest, len(words) - i), 0, -1):
        form = tuple(words[i:i + n])
        if form in self._forms and tagged[i + n - 1][1] == tagged[i][1]:
          break
      else:
        i += 1
        continue
      clause = tagged[i][1]
      negated = any(w in self._negations for w, c in tagged[max(0, i - self._window):i]
                    if c == clause)
      label = " ".join(form)
      if not negated and label not in seen:
        seen.add(label)
        out.append(label)
      i += n
    return out

  def cell(self, text: str) -> str:
    return to_cell(self.labels(text))
