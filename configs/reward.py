"""The reward's section of a config: the terms, their weights and the length penalty
(`affect_jax/rewards/total.py`; the terms are registered in `affect_jax/rewards/terms/`).

Other configs attach it: `c.reward = reward.get_reward_config()`; the step reads it with
`total.RewardConfig.from_config(c.reward)`, which builds every term's section with its
registered dataclass and validates every field.
Defaults: accuracy 1.0 and format 0.1 (PAPER_NOTES.md section 3), auxiliary rewards off,
no length penalty.
"""
import ml_collections

from configs import overrides as overrides_lib


def get_reward_config(**overrides) -> ml_collections.ConfigDict:
  """The reward section; keyword arguments override top-level fields (e.g. `penalty="p2"`)."""
  c = ml_collections.ConfigDict()
  # The terms, by registered name, each with its weight (total = weighted sum, each term in
  # [0, 1]), normalize ('none' | 'batch': standardised over the batch first) and its own
  # fields. Adding a term: one module in affect_jax/rewards/terms/ and one line here.
  c.terms = ml_collections.ConfigDict()
  c.terms.accuracy = dict(weight=1.0)    # per-sample EW-F of the <answer> labels vs ground truth
  c.terms.format = dict(weight=0.1)      # "<think>..</think><answer>..</answer>", both non-empty
  c.terms.alignment = dict(weight=0.0)   # EW-F of the <think> words vs the <answer> labels
  c.terms.dual = dict(weight=0.0)        # EW-F of the <think> words vs ground truth
  c.normalize_eps = 1e-6                 # (x - mean) / (std + eps) of a normalize='batch' term
  # Length penalty when the answer has more labels than the ground truth (n_pred > n_gt):
  # 'none' | 'p1' 1/(n_pred-n_gt+1) | 'p2' n_gt/n_pred | 'p3' see p3_form.
  c.penalty = "none"
  c.penalty_terms = "accuracy"   # comma-separated terms the penalty multiplies
  # P3: 'shifted' log(n_gt+1)/log(n_pred+1) (defined at n_gt = 1); 'raw' log(n_gt)/log(n_pred)
  # as printed in the paper (0 when n_gt <= 1, where it is 0 or undefined).
  c.p3_form = "shifted"
  # The EW analysis the four EW terms share (affect_jax/rewards/terms/emotion_wheel.py).
  c.ew = ml_collections.ConfigDict()
  # Bad completions score 0 on every EW term: more answer items than max_labels (reward
  # hacking by listing many emotions).
  c.ew.max_labels = 16
  # Optional caps on on-device work (0 = none: the parsers loop as long as the longest
  # answer / think of the batch): an answer over max_answer_tokens tokens scores 0 on every
  # EW term; a think over max_think_tokens tokens yields no think words (alignment, dual 0).
  c.ew.max_answer_tokens = 0
  c.ew.max_think_tokens = 0
  c.ew.max_gt_labels = 16   # width of the padded ground-truth arrays
  return overrides_lib.apply(c, overrides, "get_reward_config")


def get_config() -> ml_collections.ConfigDict:
  return get_reward_config()
