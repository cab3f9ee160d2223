"""Label extraction: <answer> spans and the rule extractor (surface forms of the wheel in free
text), against hand-written expectations on the project's demo wheel."""
import pytest

from affect_jax.emotion import extract
from affect_jax.emotion import labels as labels_lib
from affect_jax.emotion import wheel
from configs import unibench


@pytest.fixture(scope="module")
def rule():
  c = unibench.get_unibench_config()
  return extract.RuleExtractor(wheel.load_tables(None), c.negations, c.negation_window)


@pytest.mark.parametrize("text, expect", [
    # Inflections are surface forms; case does not matter; repeats are dropped.
    ("She is Sad, so sad, and speaks happily.", ["sad", "happily"]),
    # The longest surface form wins: "down" alone is a form, "let down" a longer one.
    ("He feels let down and down.", ["let down", "down"]),
    ("taken aback, fed up and on edge", ["taken aback", "fed up", "on edge"]),
    ("self-conscious; worries", ["self-conscious", "worries"]),
    # Multi-word forms stay inside one clause.
    ("Let. Down", ["down"]),
    # Negations within 2 words of the same clause drop the label; a clause break ends them.
    ("He is not happy but calm.", ["calm"]),
    ("no joy, never really tense. Not now. Sadness", ["sadness"]),
    ("isn't calm, but doesn’t hide joy", []),
    # Tags are clause breaks; the whole completion is read.
    ("<think>The voice is tense</think><answer>sad, tense</answer>", ["tense", "sad"]),
    ("nothing to see here: the meeting starts at nine", []),
    ("", []),
])
def test_rule_extractor(rule, text, expect):
  assert rule.labels(text) == expect
  # The cell reads back through the official list rule unchanged.
  assert labels_lib.parse_labels(rule.cell(text)) == expect


def test_negation_window_zero_keeps_everything():
  r = extract.RuleExtractor(wheel.load_tables(None), ("not",), 0)
  assert r.labels("not happy") == ["happy"]
  with pytest.raises(ValueError, match="negation_window"):
    extract.RuleExtractor(wheel.load_tables(None), (), -1)


def test_answer_cell():
  assert extract.answer_cell("<think>x</think><answer>sad, tense</answer>") == "sad, tense"
  assert extract.answer_cell("<think>x</think> sad") == ""
  assert extract.answer_cell("<answer>[a]</answer>") == "[a]"


def test_rule_extractor_on_the_official_wheel(official_ew_dir):
  r = extract.RuleExtractor(wheel.load_tables(str(official_ew_dir)), ("not",), 2)
  assert r.labels("The character seems worried and not happy, maybe surprised.") == [
      "worried", "surprised"]
