"""On-device EW reward == the host rules, for several tokenizers; bad inputs; penalties."""

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from affect_jax.emotion import labels, wheel
from affect_jax.rewards import ew_reference, ew_scan, registry, total
from affect_jax.rewards import ew_tables as reward_tables
from affect_jax.rewards import penalty as penalty_lib
from affect_jax.rewards.terms import emotion_wheel as ew_term
from tests.testlib import ew as ew_testlib
from configs.reward import get_reward_config

TERMS = ("accuracy", "format", "alignment", "dual", "penalty", "total")


def reward_config(weights=None, ew=None, **top):
  """A RewardConfig from configs/reward.py with some weights / EW fields / top-level fields
  changed."""
  c = get_reward_config(**top)
  for name, w in (weights or {}).items():
    c.terms[name].weight = w
  for name, v in (ew or {}).items():
    c.ew[name] = v
  return total.RewardConfig.from_config(c)


CFG = reward_config(dict(accuracy=1.0, format=0.25, alignment=0.5, dual=0.5), penalty="p3",
                    penalty_terms="accuracy,dual")


def _rows(gt_ids, n_gt):
  return {"gt_ids": gt_ids, "n_gt": n_gt}


def _fn(tokenizer, tables, cfg, **build):
  """The jitted reward of cfg for tokenizer and wheel `tables` (build: build_reward_tables
  keywords)."""
  resources = {"analysis/ew": reward_tables.to_device(
      reward_tables.build_reward_tables(tokenizer, tables, **build))}
  fn = total.make_reward_fn(resources, cfg)
  return lambda ids, lengths, gt_ids, n_gt: fn(ids, lengths, _rows(gt_ids, n_gt))


@pytest.fixture(scope="module")
def demo():
  return wheel.load_tables(None)


def _corpus(tables, count=1500, seed=0):
  rng = np.random.default_rng(seed)
  surfaces = list(tables.surfaces)
  return tuple(ew_testlib.random_completion(rng, surfaces) for _ in range(count)) + tuple(
      surfaces)


def _tokenizer(kind, tables):
  corpus = _corpus(tables)
  if kind == "bpe":
    return ew_testlib.bpe_tokenizer(corpus)
  if kind == "bpe_merged":   # merges across tags, separators and words
    return ew_testlib.bpe_tokenizer(corpus, vocab_size=2500, qwen_regex=False)
  if kind == "bpe_tag_tokens":
    return ew_testlib.bpe_tokenizer(corpus, added=("<think>", "</think>", "<answer>",
                                                   "</answer>", "</think><answer>"))
  if kind == "char":
    return ew_testlib.char_tokenizer("".join(sorted(set("".join(corpus)))))
  if kind == "project":
    from affect_jax.data import tokenizer as tokenizer_lib
    from configs import data as data_config
    c = data_config.tokenizer_config()
    return tokenizer_lib.build_tokenizer(
        list(corpus), 1024, dict(c.special_tokens), tuple(c.added_tokens),
        pretokenize_regex=c.pretokenize_regex)
  raise ValueError(kind)


def _device(tokenizer, tables, texts, gts, cfg=CFG, width=None):
  ids, lengths = ew_testlib.encode(tokenizer, texts, width)
  gt_ids, n_gt = ew_term.gt_arrays(gts, tables, cfg.analysis("ew").max_gt_labels)
  return jax.device_get(_fn(tokenizer, tables, cfg)(ids, lengths, gt_ids, n_gt))


@pytest.mark.parametrize("kind", ["bpe", "bpe_merged", "bpe_tag_tokens", "char", "project"])
def test_device_equals_host_rules(demo, kind):
  tokenizer = _tokenizer(kind, demo)
  rng = np.random.default_rng(1)
  surfaces = list(demo.surfaces)
  texts = [ew_testlib.random_completion(rng, surfaces) for _ in range(160)]
  gts = [", ".join(rng.choice(surfaces, size=int(rng.integers(0, 4)))) for _ in texts]
  out = _device(tokenizer, demo, texts, gts)
  ref = ew_testlib.ReferenceWheel(wheel.DEMO_DIR)
  for i, text in enumerate(texts):
    assert reward_tables.decode(tokenizer, tokenizer(text, add_special_tokens=False)[
        "input_ids"]) == text
    host = ew_reference.reference_scores(text, gts[i], demo, CFG)
    for term in TERMS:
      assert out[term][i] == pytest.approx(host[term], abs=1e-6), (term, text, gts[i])
    assert out["n_pred"][i] == host["n_pred"]
    # The accuracy term is the official metric on the answer (independent reference).
    answer = labels.split_completion(text).answer
    if not host["bad"]:
      assert out["accuracy"][i] == pytest.approx(ref.sample_f(gts[i], answer), abs=1e-6)


# ------------------------------------------------------------------------------------------
# Property test: random label lists from the surface forms plus junk, to 1e-6.

_JUNK_WORDS = ("xyzzy", "neutral", "happy!", "la la", "[sad", "glad]", "qwerty", "ok", "")
_WIDTH, _BATCH = 160, 8


def _property_setup(tables, name):
  surfaces = list(tables.surfaces)
  rng = np.random.default_rng(5)
  corpus = tuple(f"<think>{a} and {b}</think><answer>{a}, {b.upper()}, {c.capitalize()}"
                 f"</answer>" for a, b, c in rng.choice(surfaces, size=(3000, 3))) + tuple(
                     surfaces)
  tokenizer = ew_testlib.bpe_tokenizer(corpus, vocab_size=3000)
  cfg = reward_config(ew=dict(max_gt_labels=8))
  return dict(surfaces=surfaces, tokenizer=tokenizer, cfg=cfg, fn=_fn(tokenizer, tables, cfg),
              name=name)


def _render(draw, surfaces):
  label = st.one_of(st.sampled_from(surfaces), st.sampled_from(_JUNK_WORDS),
                    st.text("abcdefghij -", max_size=6))
  case = st.sampled_from([str, str.upper, str.capitalize, lambda s: " " + s])
  preds = draw(st.lists(st.tuples(label, case), max_size=6))
  sep = draw(st.sampled_from([", ", ",", " , ", "; "]))
  think = " ".join(draw(st.lists(st.sampled_from(surfaces[:50] + ["the", "sad."]), max_size=4)))
  gt = ", ".join(draw(st.lists(st.sampled_from(surfaces), max_size=3)))
  answer = sep.join(f(x) for x, f in preds)
  return f"<think>{think}</think><answer>{answer}</answer>", gt


def _check_property(setup, draw, tables, reference):
  rows = [_render(draw, setup["surfaces"]) for _ in range(_BATCH)]
  texts, gts = [r[0] for r in rows], [r[1] for r in rows]
  ids, lengths = ew_testlib.encode(setup["tokenizer"], texts, _WIDTH)
  gt_ids, n_gt = ew_term.gt_arrays(gts, tables, 8)
  out = jax.device_get(setup["fn"](ids, lengths, gt_ids, n_gt))
  for i, text in enumerate(texts):
    expected = reference.sample_f(gts[i], labels.split_completion(text).answer)
    if len(labels.parse_labels(labels.split_completion(text).answer)) > setup["cfg"].analysis(
        "ew").max_labels:
      expected = 0.0
    assert abs(float(out["accuracy"][i]) - expected) <= 1e-6, (text, gts[i])
    assert np.isfinite(out["total"][i])


@pytest.fixture(scope="module")
def official_setup(official_ew_dir):
  tables = wheel.load_tables(official_ew_dir)
  return tables, ew_testlib.ReferenceWheel(official_ew_dir), _property_setup(tables, "official")


@pytest.fixture(scope="module")
def demo_setup(demo):
  return demo, ew_testlib.ReferenceWheel(wheel.DEMO_DIR), _property_setup(demo, "demo")


@hypothesis.settings(max_examples=25, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(data=st.data())
def test_property_official_surfaces(official_setup, data):
  tables, reference, setup = official_setup
  _check_property(setup, data.draw, tables, reference)


@hypothesis.settings(max_examples=15, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(data=st.data())
def test_property_demo_surfaces(demo_setup, data):
  tables, reference, setup = demo_setup
  _check_property(setup, data.draw, tables, reference)


# ------------------------------------------------------------------------------------------
# Bad completions: reward 0, never NaN, never a crash.


def test_bad_completions_score_zero(demo):
  tokenizer = _tokenizer("bpe", demo)
  many = ", ".join(["happy"] * 3000)
  texts = ["", "no tags at all: happy", "<think>x</think><answer>", "<answer>happy",
           "<think>x</think><answer></answer>", "<think>x</think><answer> , ,, </answer>",
           "<think>" * 40, "</answer>happy<answer>", f"<think>x</think><answer>{many}</answer>",
           "<think>x</think><answer>anxious</answer>"]
  gts = ["happy"] * (len(texts) - 1) + ["anxious"]    # anxious maps in all 5 demo wheels
  out = _device(tokenizer, demo, texts, gts)
  for term in TERMS:
    assert np.all(np.isfinite(out[term]))
  assert out["accuracy"][:-1].tolist() == [0.0] * (len(texts) - 1)
  # Only format can pay: the answer " , ,, " is well-formed (non-whitespace) but empty.
  expected_total = [0.0] * (len(texts) - 2)
  expected_total[5] = CFG.weight("format")
  assert out["total"][:-2].tolist() == pytest.approx(expected_total)
  assert bool(out["bad"][-2]) and out["n_pred"][-2] == 3000    # thousands of labels
  assert out["total"][-2] == 0.0 and out["format"][-2] == 0.0
  assert out["accuracy"][-1] == 1.0 and out["format"][-1] == 1.0


def test_garbage_ids_and_lengths(demo):
  tokenizer = _tokenizer("bpe", demo)
  fn = _fn(tokenizer, demo, CFG)
  rng = np.random.default_rng(0)
  ids = rng.integers(-5, len(reward_tables.token_bytes(tokenizer)) + 50,
                     size=(32, 64)).astype(np.int32)
  lengths = rng.integers(-3, 90, size=32).astype(np.int32)
  gt_ids = rng.integers(-1, len(demo.surfaces), size=(32, 4)).astype(np.int32)
  out = jax.device_get(fn(ids, lengths, gt_ids, np.full(32, 2, np.int32)))
  for term in TERMS:
    assert np.all(np.isfinite(out[term])) and np.all(out[term] >= 0)
  for width in (0, 1):                                  # degenerate widths
    out = jax.device_get(fn(np.zeros((2, width), np.int32), np.zeros(2, np.int32),
                            gt_ids[:2], np.full(2, 2, np.int32)))
    assert out["total"].tolist() == [0.0, 0.0]


def test_optional_token_caps_match_host(demo):
  tokenizer = _tokenizer("bpe", demo)
  cfg = reward_config(dict(alignment=1.0), dict(max_answer_tokens=5, max_think_tokens=4))
  rng = np.random.default_rng(3)
  surfaces = list(demo.surfaces)
  texts = [ew_testlib.random_completion(rng, surfaces) for _ in range(80)]
  gts = [", ".join(rng.choice(surfaces, size=2)) for _ in texts]
  out = _device(tokenizer, demo, texts, gts, cfg)
  for i, text in enumerate(texts):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = reward_tables.token_bytes(tokenizer)
    spans, at = [], 0
    for t in ids:
      spans.append((at, at + len(pieces[t])))
      at += len(pieces[t])
    host = ew_reference.reference_scores(text, gts[i], demo, cfg, token_spans=spans)
    for term in TERMS:
      assert out[term][i] == pytest.approx(host[term], abs=1e-6), (term, text)


# ------------------------------------------------------------------------------------------
# Penalties, config, tokenizers.


@pytest.mark.parametrize("penalty, p3_form", [("p1", "shifted"), ("p2", "shifted"),
                                              ("p3", "shifted"), ("p3", "raw"),
                                              ("none", "shifted")])
def test_penalty_formulas(penalty, p3_form):
  cfg = reward_config(penalty=penalty, p3_form=p3_form)
  n_pred = np.array([0, 1, 3, 5, 5, 2, 4])
  n_gt = np.array([1, 1, 1, 2, 0, 3, 4])
  expected = []
  for p, g in zip(n_pred, n_gt):
    if p <= g or penalty == "none":
      expected.append(1.0)
    elif penalty == "p1":
      expected.append(1 / (p - g + 1))
    elif penalty == "p2":
      expected.append(g / p)
    elif p3_form == "shifted":
      expected.append(np.log(g + 1) / np.log(p + 1))
    else:
      expected.append(np.log(g) / np.log(p) if g > 1 else 0.0)
  np.testing.assert_allclose(penalty_lib.penalty_factor(n_pred, n_gt, cfg), expected, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(penalty_lib.penalty_factor(n_pred, n_gt, cfg,
                                                                   xp=jax.numpy)),
                             expected, rtol=1e-6)


def test_config_round_trip_and_errors():
  cfg = reward_config(penalty="p2", penalty_terms="accuracy, format")
  assert cfg.penalty == "p2" and cfg.penalty_terms == ("accuracy", "format")
  assert [n for n, _ in cfg.terms] == ["accuracy", "format", "alignment", "dual"]
  assert cfg.weight("format") == 0.1 and cfg.analysis("ew").max_labels == 16
  with pytest.raises(ValueError, match="reward.penalty='p9'"):
    reward_config(penalty="p9")
  with pytest.raises(ValueError, match="unknown \\['speed'\\]"):
    reward_config(penalty_terms="speed")
  with pytest.raises(ValueError, match="reward.ew.max_labels=0"):
    reward_config(ew=dict(max_labels=0))
  with pytest.raises(ValueError, match="unknown field"):
    get_reward_config(w_magic=1.0)
  c = get_reward_config()
  c.terms.speed = dict(weight=1.0)
  with pytest.raises(ValueError, match="reward.terms.speed: no such reward term"):
    total.RewardConfig.from_config(c)
  c = get_reward_config()
  c.terms.format.scale = 2.0
  with pytest.raises(ValueError, match="reward.terms.format: unknown fields \\['scale'\\]"):
    total.RewardConfig.from_config(c)
  c = get_reward_config()
  c.terms.format.normalize = "sum"
  with pytest.raises(ValueError, match="reward.terms.format: normalize='sum'"):
    total.RewardConfig.from_config(c)
  c = get_reward_config()
  c.terms.format.weight = float("nan")
  with pytest.raises(ValueError, match="reward.terms.format: weight=nan"):
    total.RewardConfig.from_config(c)


@pytest.mark.parametrize("rows", [1, 3, 64])
def test_parser_compaction_changes_no_value(demo, rows):
  """A few long contents among short ones: the parsers continue the long rows on fewer lanes
  (and pad those lanes with copies of a row); every output equals one phase and the host."""
  tokenizer = _tokenizer("bpe", demo)
  rng = np.random.default_rng(7)
  surfaces = list(demo.surfaces)
  texts, gts = [], []
  for i in range(rows):
    count = 12 if i % 9 == 0 else int(rng.integers(1, 3))
    answer = ", ".join(rng.choice(surfaces, size=count))
    think = " ".join(rng.choice(surfaces, size=3 * count))
    texts.append(f"<think>{think}</think><answer>{answer}</answer>")
    gts.append(", ".join(rng.choice(surfaces, size=2)))
  ids, lengths = ew_testlib.encode(tokenizer, texts)
  gt_ids, _ = ew_term.gt_arrays(gts, demo, 16)
  tables = reward_tables.to_device(reward_tables.build_reward_tables(tokenizer, demo))
  ew = CFG.analysis("ew")
  outs = [jax.device_get(jax.jit(lambda i, l, g: ew_term.analyse(
      i, l, g, tables, ew, think=True, compaction=c))(ids, lengths, gt_ids))
          for c in ((), ew_scan.PARSER_COMPACTION, (2, 4, 8, 16, 32))]
  for out in outs[1:]:
    for key in outs[0]:
      np.testing.assert_array_equal(out[key], outs[0][key], err_msg=key)
  for i, text in enumerate(texts):
    host = ew_reference.reference_terms(text, gts[i], demo, ew)
    for term in ew_reference.EW_TERMS:
      assert outs[1][term][i] == pytest.approx(host[term], abs=1e-6), (term, text)


def test_hash_bases_change_no_value(demo):
  """The label hash's bases are a table-building detail: other odd bases, the same rewards."""
  tokenizer = _tokenizer("bpe", demo)
  rng = np.random.default_rng(11)
  surfaces = list(demo.surfaces)
  texts = [ew_testlib.random_completion(rng, surfaces) for _ in range(40)]
  gts = [", ".join(rng.choice(surfaces, size=2)) for _ in texts]
  ids, lengths = ew_testlib.encode(tokenizer, texts)
  gt_ids, n_gt = ew_term.gt_arrays(gts, demo, 16)
  outs = [jax.device_get(_fn(tokenizer, demo, CFG, **build)(ids, lengths, gt_ids, n_gt))
          for build in ({}, {"bases": (0x2545F491, 0x27D4EB2F)})]
  assert outs[1]["accuracy"].tolist() != [0.0] * len(texts)
  for key in outs[0]:
    np.testing.assert_array_equal(outs[1][key], outs[0][key], err_msg=key)


def test_tables_as_jit_arguments(demo):
  tokenizer = ew_testlib.char_tokenizer("".join(sorted(set("<think>/answer happy, sad"))))
  cfg = reward_config(ew=dict(max_gt_labels=4))
  resources = total.setup(cfg, registry.Context(tokenizer, demo))
  fn = jax.jit(total.completion_rewards, static_argnames=("cfg",))
  ids, lengths = ew_testlib.encode(tokenizer, ["<think>sad</think><answer>happy, sad</answer>"])
  gt_ids, n_gt = ew_term.gt_arrays(["happy"], demo, 4)
  out = fn(ids, lengths, _rows(gt_ids, n_gt), resources, cfg=cfg)
  assert float(out["format"][0]) == 1.0
  assert 0.0 < float(out["accuracy"][0]) <= 1.0


def test_row_local_rewards_on_a_mesh_equal_one_device(demo):
  """Each device scoring its own rows (shard_map, per-device loop lengths) changes nothing."""
  if jax.device_count() < 8:
    pytest.skip("needs 8 (fake) devices")
  tokenizer = _tokenizer("bpe", demo)
  rng = np.random.default_rng(3)
  surfaces = list(demo.surfaces)
  # Rows of very different lengths, so the devices' loops run different trip counts.
  texts = [ew_testlib.random_completion(rng, surfaces) for _ in range(30)] + [
      "<think>x</think><answer>" + ", ".join(surfaces[:12]) + "</answer>", "no tags"]
  gts = [", ".join(rng.choice(surfaces, size=int(rng.integers(1, 4)))) for _ in texts]
  ids, lengths = ew_testlib.encode(tokenizer, texts)
  gt_ids, n_gt = ew_term.gt_arrays(gts, demo, 16)
  resources = total.setup(CFG, registry.Context(tokenizer, demo))
  single = jax.device_get(total.make_reward_fn(resources, CFG)(ids, lengths,
                                                               _rows(gt_ids, n_gt)))
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "fsdp"))
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  args = [jax.device_put(a, rows) for a in (ids, lengths, gt_ids, n_gt)]
  fn = jax.jit(lambda i, l, g, n: total.row_local_rewards(
      i, l, _rows(g, n), resources, CFG, mesh=mesh, batch_axes=("data", "fsdp")))
  out = fn(*args)
  assert out["total"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
  out = jax.device_get(out)
  assert set(out) == set(single)
  for key in single:
    np.testing.assert_array_equal(out[key], single[key], err_msg=key)
  with pytest.raises(ValueError, match="multiple of 8 rows"):
    total.row_local_rewards(ids[:6], lengths[:6], _rows(gt_ids[:6], n_gt[:6]), resources, CFG,
                            mesh=mesh, batch_axes=("data", "fsdp"))


def test_non_concatenating_tokenizer_is_rejected(demo):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast
  tok = Tokenizer(models.WordPiece({"[UNK]": 0, "happy": 1, "##ly": 2}, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.decoder = decoders.WordPiece()
  with pytest.raises(reward_tables.TokenizerError, match="concatenation"):
    reward_tables.build_reward_tables(PreTrainedTokenizerFast(tokenizer_object=tok), demo)


def test_gt_arrays_limits(demo):
  ids, n = ew_term.gt_arrays(["happy, xyzzy", ""], demo, 3)
  assert n.tolist() == [2, 0]
  assert ids[0, 0] == demo.surface_ids()["happy"] and ids[0, 1] == -1 and ids[1].max() == -1
  with pytest.raises(ValueError, match="ground truth row 0: 4 labels"):
    ew_term.gt_arrays(["a, b, c, d"], demo, 3)


def test_device_piece_transition_equals_the_host_rule():
  """Every (piece class, label state) pair: the on-device arithmetic == reward_tables'."""
  klass, state = np.meshgrid(np.arange(64, dtype=np.uint32), np.arange(16, dtype=np.uint32))
  new, gap_one, allws = jax.jit(ew_scan.piece_transition)(klass.ravel(), state.ravel())
  for k, s, n, g, a in zip(klass.ravel(), state.ravel(), np.asarray(new), np.asarray(gap_one),
                           np.asarray(allws)):
    want_new, want_gap, want_allws = reward_tables.piece_transition(int(k), int(s))
    assert (int(n), bool(g), bool(a)) == (want_new, want_gap == 1, want_allws), (k, s)


@pytest.mark.parametrize("batch, widths", [(64, (32, 8)), (64, (16,)), (5, (2, 1)), (1, ())])
def test_lane_loop_runs_every_row_its_own_steps(batch, widths):
  """lane_loop == a plain loop: each row sees steps j < its length, in order, on any lanes."""
  rng = np.random.default_rng(batch)
  top = 40
  length = rng.integers(0, top + 1, batch).astype(np.int32)
  length[0] = top

  def body(j, carry, lanes):
    total, last = carry
    live = j < lanes["length"]
    return (jnp.where(live, total * 3 + j + lanes["salt"], total) % 1000003,
            jnp.where(live, j, last))

  carry = (np.zeros(batch, np.int32), np.full(batch, -1, np.int32))
  lanes = {"length": length, "salt": np.arange(batch, dtype=np.int32)}
  fn = jax.jit(lambda c, l, n: ew_scan.lane_loop(body, c, l, n, jnp.max(n), widths, top))
  total, last = fn(carry, lanes, length)
  for b in range(batch):
    want = 0
    for j in range(length[b]):
      want = (want * 3 + j + b) % 1000003
    assert int(total[b]) == want and int(last[b]) == length[b] - 1, b


def test_bitmask_helpers_equal_numpy():
  """first / last / above / below / count / bit_at on random position sets (W = 3 words)."""
  rng = np.random.default_rng(3)
  sets = (rng.random((16, 96)) < rng.random((16, 1)) * 0.3)
  sets[0] = False
  pos = rng.integers(-2, 99, 16).astype(np.int32)
  sets[1, 33], pos[1] = True, 97        # past the last word: not the bit of position 65
  sets[1, 65] = True
  words = np.stack([(sets[:, 32 * w:32 * w + 32] * (1 << np.arange(32, dtype=np.uint64))).sum(
      1) for w in range(3)]).astype(np.uint32)
  m = jnp.asarray(words)
  got = jax.jit(lambda m, p: dict(
      first=ew_scan.mask_first(m), last=ew_scan.mask_last(m),
      above=ew_scan.mask_first(ew_scan.mask_above(m, p)),
      below=ew_scan.mask_count_below(m, p), count=ew_scan.mask_count(m),
      bit=ew_scan.bit_at(m, p)))(m, pos)
  for b in range(16):
    where = np.flatnonzero(sets[b])
    assert got["first"][b] == (where[0] if len(where) else -1)
    assert got["last"][b] == (where[-1] if len(where) else -1)
    later = where[where > pos[b]]
    assert got["above"][b] == (later[0] if len(later) else -1)
    assert got["below"][b] == np.sum(where < pos[b]) and got["count"][b] == len(where)
    assert bool(got["bit"][b]) == bool(0 <= pos[b] < 96 and sets[b, pos[b]])
