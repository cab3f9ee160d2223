"""The reward's section of a config: every number `affect_jax/rewards/emotion_wheel.py` uses.

Other configs attach it: `c.reward = reward.get_reward_config()`; the step reads it with
`rewards.RewardConfig.from_config(c.reward)`, which validates every field.
Defaults: accuracy 1.0 and format 0.1 (PAPER_NOTES.md section 3), auxiliary rewards off,
no length penalty.
"""
import ml_collections

from configs import overrides as overrides_lib


def get_reward_config(**overrides) -> ml_collections.ConfigDict:
  """The reward section; keyword arguments override fields (e.g. `penalty="p2"`)."""
  c = ml_collections.ConfigDict()
  # Weighted sum of the terms (each in [0, 1]).
  c.w_accuracy = 1.0     # per-sample EW-F of the <answer> labels vs ground truth, 5 wheels
  c.w_format = 0.1       # "<think>..</think><answer>..</answer>", both non-empty
  c.w_alignment = 0.0    # EW-F of the <think> words (prediction) vs the <answer> labels
  c.w_dual = 0.0         # EW-F of the <think> words (prediction) vs ground truth
  # Length penalty when the answer has more labels than the ground truth (n_pred > n_gt):
  # 'none' | 'p1' 1/(n_pred-n_gt+1) | 'p2' n_gt/n_pred | 'p3' see p3_form.
  c.penalty = "none"
  c.penalty_terms = "accuracy"   # comma-separated terms the penalty multiplies
  # P3: 'shifted' log(n_gt+1)/log(n_pred+1) (defined at n_gt = 1); 'raw' log(n_gt)/log(n_pred)
  # as printed in the paper (0 when n_gt <= 1, where it is 0 or undefined).
  c.p3_form = "shifted"
  # Bad completions score 0 on every term: more answer items than max_labels (reward hacking
  # by listing many emotions).
  c.max_labels = 16
  # Optional caps on on-device work (0 = none: the parsers loop as long as the longest
  # answer / think of the batch): an answer over max_answer_tokens tokens scores 0 on every
  # term; a think over max_think_tokens tokens yields no think words (alignment, dual 0).
  c.max_answer_tokens = 0
  c.max_think_tokens = 0
  c.max_gt_labels = 16   # width of the padded ground-truth arrays
  # Two odd bases of the 2 x 32-bit polynomial label hash.
  c.hash_bases = (0x01000193, 0x5BD1E995)
  # Speed only (no effect on any value): the answer / think parsers step over every row's
  # tokens in lock-step; once at most B/d rows (B: rows per device) are still inside their
  # content, those continue on B/d lanes, for each divisor d here. () = one phase.
  c.parser_compaction = (2, 8)
  return overrides_lib.apply(c, overrides, "get_reward_config")


def get_config() -> ml_collections.ConfigDict:
  return get_reward_config()
