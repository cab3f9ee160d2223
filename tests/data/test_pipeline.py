"""The grain pipeline on a built demo dataset: batches, buckets, shuffling, host shards,
iterator state, worker processes, paths vs raw media, and the feature cache.

References: prompts.py encodes each example on its own (the batches must hold exactly those
ids, left-padded); media.py decodes the original files; numpy "encoders" for the cache.
"""
import os

from absl import flags
import numpy as np
import pytest
import torch
from transformers import Wav2Vec2FeatureExtractor

from affect_jax.data import builders
from affect_jax.data import features
from affect_jax.data import media
from affect_jax.data import pipeline
from affect_jax.data import prompts
from affect_jax.data import synthetic
from affect_jax.data import tokenizer as tok_lib
from configs import data as data_config

NUM_TRAIN = 10


@pytest.fixture(scope="module")
def cfg():
  c = data_config.get_data_config()
  c.media.num_frames = 2
  c.media.image_size = 16
  c.media.num_windows = 2
  c.media.window_seconds = 0.25
  c.synthetic.splits = dict(train=NUM_TRAIN, rl=3, test=2)
  return c


@pytest.fixture(scope="module")
def demo(tmp_path_factory, cfg):
  """(demo source folder, raw build report, paths build report)."""
  root = tmp_path_factory.mktemp("pipe")
  src = synthetic.ensure_demo_data(str(root / "src"), cfg.synthetic)
  reports = []
  for mode in ("raw", "paths"):
    b = data_config.builder_config()
    b.media = mode
    reports.append(builders.build("demo", src, str(root / "out"), cfg, b, ("train",)))
  return src, reports[0], reports[1]


@pytest.fixture(scope="module")
def tokenizer(demo, cfg):
  rows = synthetic.read_split(demo[0], "train", cfg.synthetic)
  texts = [prompts.example_text(r["english"], [r["openset"]], r["reason"], cfg.prompt,
                                dict(cfg.tokenizer.special_tokens)) for r in rows]
  return tok_lib.build_from_config(texts, cfg.tokenizer)


def _pcfg(**changes):
  p = data_config.pipeline_config()
  for k, v in changes.items():
    p[k] = v
  return p


def _names(batches):
  return [str(n) for b in batches for n, m in zip(b["names"], b["example_mask"]) if m]


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _source(report, split="train"):
  return builders.load_source(report["path"], split)


def test_sft_batches_hold_each_example_left_padded_to_a_bucket(demo, cfg, tokenizer):
  source, meta = _source(demo[1])
  loader = pipeline.sft_loader(source, meta, tokenizer, cfg, _pcfg(batch_size=4))
  records = {r["name"]: r for r in map(pipeline.decode_example,
                                        (source[i] for i in range(len(source))))}
  specials = dict(cfg.tokenizer.special_tokens)
  pad = tokenizer.convert_tokens_to_ids(specials["pad"])
  for batch in _take(iter(loader), 4):
    b, length = batch["tokens"].shape
    assert b == 4 and length in cfg.prompt.sequence_buckets
    assert batch["tokens"].dtype == np.int32 and batch["frames"].shape == (4, 2, 16, 16, 3)
    assert batch["windows"].shape == (4, 2, 4000) and batch["example_mask"].all()
    for row in range(b):
      rec = records[str(batch["names"][row])]
      p_ids, t_ids = prompts.encode_example(tokenizer, rec["subtitle"], rec["labels"],
                                            rec["reason"], cfg.prompt, specials)
      n = len(p_ids) + len(t_ids)
      np.testing.assert_array_equal(batch["tokens"][row, length - n:], p_ids + t_ids)
      assert (batch["tokens"][row, :length - n] == pad).all()
      assert batch["attention_mask"][row].sum() == n and batch["attention_mask"][row, -n:].all()
      assert batch["loss_mask"][row].sum() == len(t_ids)
      assert batch["loss_mask"][row, -len(t_ids):].all()
      np.testing.assert_array_equal(batch["frames"][row],
                                    pipeline.load_media(rec, cfg.media, meta)["frames"])


def test_prompt_batches_and_the_label_encoder_hook(demo, cfg, tokenizer):
  source, meta = _source(demo[1])
  width = 6

  def encode(labels):
    ids = np.full(width, -1, np.int32)
    ids[:len(labels)] = [len(w) for w in labels]
    return {"gt_ids": ids, "n_gt": np.int32(len(labels))}

  loader = pipeline.prompt_loader(source, meta, tokenizer, cfg, _pcfg(batch_size=3),
                                  label_encoder=encode)
  batch = next(iter(loader))
  b, p = batch["prompt_tokens"].shape
  assert b == 3 and p in cfg.prompt.prompt_buckets
  assert batch["gt_ids"].shape == (3, width) and batch["n_gt"].shape == (3,)
  assert np.isnan(batch["valence"]).all() and batch["valence"].dtype == np.float32
  assert sorted(pipeline.device_arrays(batch)) == [
      "example_mask", "frames", "gt_ids", "n_gt", "prompt_mask", "prompt_tokens", "valence",
      "windows"]
  records = {r["name"]: r for r in map(pipeline.decode_example,
                                        (source[i] for i in range(len(source))))}
  for row in range(b):
    rec = records[str(batch["names"][row])]
    ids = prompts.encode_prompt(tokenizer, rec["subtitle"], cfg.prompt,
                                dict(cfg.tokenizer.special_tokens))
    np.testing.assert_array_equal(batch["prompt_tokens"][row, p - len(ids):], ids)
    assert batch["prompt_mask"][row].sum() == len(ids)
    assert batch["gt_text"][row] == ", ".join(rec["labels"])
    assert batch["n_gt"][row] == len(rec["labels"])
  # A plain array from the encoder is batched as gt_ids.
  loader = pipeline.prompt_loader(source, meta, tokenizer, cfg, _pcfg(batch_size=2),
                                  label_encoder=lambda ls: encode(ls)["gt_ids"])
  assert next(iter(loader))["gt_ids"].shape == (2, width)


def test_shuffle_is_seeded_and_reshuffles_each_epoch(demo, cfg, tokenizer):
  source, meta = _source(demo[1])

  def order(seed):
    p = _pcfg(batch_size=5, seed=seed, num_epochs=2, drop_remainder=False)
    return _names(iter(pipeline.prompt_loader(source, meta, tokenizer, cfg, p)))

  a, b, c = order(7), order(7), order(8)
  assert a == b and a != c
  assert sorted(a[:NUM_TRAIN]) == sorted(a[NUM_TRAIN:]) == sorted(
      pipeline.decode_example(source[i])["name"] for i in range(NUM_TRAIN))
  assert a[:NUM_TRAIN] != a[NUM_TRAIN:]
  unshuffled = _pcfg(batch_size=5, shuffle=False, num_epochs=1)
  names = _names(iter(pipeline.prompt_loader(source, meta, tokenizer, cfg, unshuffled)))
  assert names == [pipeline.decode_example(source[i])["name"] for i in range(NUM_TRAIN)]


@pytest.mark.parametrize("count", [2, 3])
def test_host_shards_are_disjoint_and_cover_the_data(demo, cfg, tokenizer, count):
  source, meta = _source(demo[1])
  shards = []
  for index in range(count):
    p = _pcfg(batch_size=2, shard_index=index, shard_count=count, num_epochs=1,
              drop_remainder=False, seed=3)
    shards.append(_names(iter(pipeline.prompt_loader(source, meta, tokenizer, cfg, p))))
  flat = [n for s in shards for n in s]
  assert len(flat) == len(set(flat)) == NUM_TRAIN
  assert abs(len(shards[0]) - len(shards[-1])) <= 1
  # The default (-1, -1) is this JAX process of one: everything.
  p = _pcfg(batch_size=2, num_epochs=1, drop_remainder=False)
  assert sorted(_names(iter(pipeline.prompt_loader(source, meta, tokenizer, cfg, p)))) == \
      sorted(flat)
  with pytest.raises(ValueError, match="shard_index=3, shard_count=3"):
    pipeline.shard_options(_pcfg(shard_index=3, shard_count=3))


def test_last_partial_batch_is_filled_and_masked(demo, cfg, tokenizer):
  source, meta = _source(demo[1])
  p = _pcfg(batch_size=4, num_epochs=1, drop_remainder=False, shuffle=False)
  batches = list(iter(pipeline.sft_loader(source, meta, tokenizer, cfg, p)))
  assert len(batches) == 3 and all(b["tokens"].shape[0] == 4 for b in batches)
  np.testing.assert_array_equal(batches[-1]["example_mask"], [True, True, False, False])
  assert batches[-1]["names"][3] == batches[-1]["names"][1]
  p.drop_remainder = True
  assert len(list(iter(pipeline.sft_loader(source, meta, tokenizer, cfg, p)))) == 2


def test_iterator_state_restores_exactly(demo, cfg, tokenizer):
  source, meta = _source(demo[1])
  p = _pcfg(batch_size=3, seed=11)
  it = iter(pipeline.sft_loader(source, meta, tokenizer, cfg, p))
  _take(it, 4)                                   # crosses the first epoch's end (10 records)
  state = it.get_state()
  want = _take(it, 5)
  fresh = pipeline.sft_loader(source, meta, tokenizer, cfg, p)
  _assert_batches_equal(_take(pipeline.restore_iterator(fresh, state), 5), want)
  _assert_batches_equal(_take(pipeline.restore_iterator(fresh, state.decode()), 5), want)


def test_worker_processes_give_the_same_batches(demo, cfg, tokenizer):
  if not flags.FLAGS.is_parsed():   # grain's workers read absl flags (parsed by app.run)
    flags.FLAGS.mark_as_parsed()
  source, meta = _source(demo[1])
  inline = _take(iter(pipeline.sft_loader(source, meta, tokenizer, cfg,
                                          _pcfg(batch_size=3, seed=5))), 4)
  loader = pipeline.sft_loader(source, meta, tokenizer, cfg,
                               _pcfg(batch_size=3, seed=5, worker_count=1))
  it = iter(loader)
  first = _take(it, 2)
  state = it.get_state()
  _assert_batches_equal(first + _take(it, 2), inline)
  _assert_batches_equal(_take(pipeline.restore_iterator(loader, state), 2), inline[2:])


def test_paths_mode_decodes_the_same_media_as_raw(demo, cfg, tokenizer):
  src, raw_report, paths_report = demo
  p = _pcfg(batch_size=NUM_TRAIN, shuffle=False, num_epochs=1)
  raw = next(iter(pipeline.sft_loader(*_source(raw_report), tokenizer, cfg, p)))
  paths = next(iter(pipeline.sft_loader(*_source(paths_report), tokenizer, cfg, p)))
  order = [list(paths["names"]).index(n) for n in raw["names"]]
  np.testing.assert_allclose(paths["frames"][order], raw["frames"], rtol=0, atol=1e-6)
  np.testing.assert_array_equal(paths["windows"][order], raw["windows"])
  m = cfg.media
  name = str(raw["names"][0])
  want = media.read_audio_windows(f"{src}/train/audio/{name}.wav", m.sample_rate,
                                  m.num_windows, m.window_seconds)
  # HuBERT's input: each window minus its mean (no checkpoint asks for normalisation here).
  np.testing.assert_allclose(raw["windows"][0], want - want.mean(1, keepdims=True), rtol=0,
                             atol=1e-6)


def _video_fn(frames):        # [B, F, S, S, 3] -> [B, F, 3]
  return frames.mean(axis=(2, 3))


def _audio_fn(windows):       # [B, K, W] -> [B, K, 2]
  return np.stack([windows.mean(-1), windows.std(-1)], -1)


def test_feature_cache_replaces_media_with_encoder_outputs(demo, cfg, tokenizer):
  raw_report = demo[1]
  path = raw_report["path"]
  source, meta = _source(raw_report)
  key = features.checkpoint_key({"w": np.ones(3, np.float32)}, "clip@step0")
  assert key != features.checkpoint_key({"w": np.zeros(3, np.float32)}, "clip@step0")
  cache = features.build_feature_cache(source, meta, path, "train", key, _video_fn, _audio_fn,
                                       cfg, batch_size=4)
  assert os.path.dirname(os.path.dirname(cache)) == os.path.join(path, "features")
  assert os.path.basename(cache) == "train"

  def never(_):
    raise AssertionError("the cache should be reused")

  assert features.build_feature_cache(source, meta, path, "train", key, never, never, cfg) == cache
  base, meta2 = builders.load_source(path, "train", skip_media=True)
  cached = features.FeatureSource(base, cache)
  p = _pcfg(batch_size=NUM_TRAIN, shuffle=False, num_epochs=1)
  got = next(iter(pipeline.prompt_loader(cached, meta2, tokenizer, cfg, p)))
  ref = next(iter(pipeline.prompt_loader(source, meta, tokenizer, cfg, p)))
  assert "frames" not in got and got["video"].shape == (NUM_TRAIN, 2, 3)
  np.testing.assert_array_equal(got["names"], ref["names"])
  np.testing.assert_allclose(got["video"], _video_fn(ref["frames"]), rtol=1e-6)
  np.testing.assert_allclose(got["audio"], _audio_fn(ref["windows"]), rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(got["prompt_tokens"], ref["prompt_tokens"])
  with pytest.raises(ValueError, match="rebuild the cache"):
    features.FeatureSource([base[0]], cache)


def test_sft_loader_skips_and_counts_over_long_records(demo, cfg, tokenizer):
  """The official loader's rule: len(prompt) + len(target) > max_length -> skipped, each one
  a too_long Skip naming the record; the batches hold exactly the others."""
  source, meta = _source(demo[1])
  specials = dict(cfg.tokenizer.special_tokens)
  total = {}
  for i in range(len(source)):
    rec = pipeline.decode_example(source[i])
    text_p = prompts.prompt_text(rec["subtitle"], cfg.prompt, specials)
    text_t = prompts.target_text(rec["labels"] or ["neutral"], rec["reason"], cfg.prompt)
    total[rec["name"]] = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"])
                             for t in (text_p, text_t))
  limit = sorted(total.values())[len(total) // 2]
  long_names = sorted(n for n, t in total.items() if t > limit)
  assert 0 < len(long_names) < len(total)
  small = cfg.copy_and_resolve_references()
  small.prompt.max_length = limit
  skipped = []
  p = _pcfg(batch_size=1, shuffle=False, num_epochs=1, drop_remainder=False)
  loader = pipeline.sft_loader(source, meta, tokenizer, small, p, skipped=skipped)
  assert sorted(s.name for s in skipped) == long_names
  assert {s.reason for s in skipped} == {"too_long"}
  assert builders.records.count_reasons(skipped) == {"too_long": len(long_names)}
  kept = _names(iter(loader))
  assert sorted(kept) == sorted(set(total) - set(long_names))
  for batch in iter(pipeline.sft_loader(source, meta, tokenizer, small, p)):
    assert batch["attention_mask"].sum() <= limit + 2


def test_video_prompt_must_match_the_dataset(demo, cfg, tokenizer):
  source, meta = _source(demo[1])
  assert meta["visual_source"] == "frames"
  faces = cfg.copy_and_resolve_references()
  faces.prompt.video_prompt = "faces"
  for make in (pipeline.sft_loader, pipeline.prompt_loader):
    with pytest.raises(ValueError, match="prompt.video_prompt='faces' but the dataset holds "
                                         "frames"):
      make(source, meta, tokenizer, faces, _pcfg())


@pytest.mark.parametrize("setting,checkpoint,normalised", [
    ("checkpoint", True, True), ("checkpoint", False, False), ("on", False, True),
    ("off", True, False)])
def test_hubert_windows_normalised_iff_the_checkpoint_says_so(demo, cfg, setting, checkpoint,
                                                              normalised):
  source, meta = _source(demo[1])
  ex = pipeline.decode_example(source[0])
  m = cfg.media.copy_and_resolve_references()
  m.audio_normalize = setting
  m.hubert_do_normalize = checkpoint
  got = pipeline.load_media(ex, m, meta)["windows"]
  windows = torch.from_numpy(media.audio_windows(ex["audio"], m.sample_rate, m.num_windows,
                                                 m.window_seconds))
  windows -= windows.mean(dim=1, keepdim=True)      # AffectGPT's in-place mean removal
  extractor = Wav2Vec2FeatureExtractor(do_normalize=normalised)
  ref = extractor(windows, sampling_rate=m.sample_rate, return_tensors="np").input_values[0]
  np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5)


def test_feature_cache_is_not_reused_across_media_settings(demo, cfg):
  raw_report = demo[1]
  path = raw_report["path"]
  source, meta = _source(raw_report)
  key = features.checkpoint_key("encoders@media-test")
  first = features.build_feature_cache(source, meta, path, "train", key, _video_fn, _audio_fn,
                                       cfg, batch_size=4)
  calls = []

  def audio_fn(windows):
    calls.append(windows.shape)
    return _audio_fn(windows)

  other = cfg.copy_and_resolve_references()
  other.media.audio_normalize = "on"
  second = features.build_feature_cache(source, meta, path, "train", key, _video_fn, audio_fn,
                                        other, batch_size=4)
  assert second != first and calls, "features of other HuBERT inputs must not be reused"
  third = features.build_feature_cache(source, meta, path, "train", key, _video_fn, audio_fn,
                                       other, batch_size=4)
  assert third == second and len(calls) == 3   # reused: no further encoder call


def test_a_data_section_without_pipeline_or_builder_settings_is_a_clear_error(tmp_path):
  """The library takes its sections from the caller (launch/ fills in configs/data.py's
  defaults); a data section without them names the section instead of a KeyError."""
  c = data_config.get_data_config()
  del c["pipeline"]
  with pytest.raises(ValueError, match=r"no `pipeline` section.*pipeline_config\(\)"):
    pipeline.prompt_loader([], {}, None, c)
  del c["builder"]
  with pytest.raises(ValueError, match=r"no `builder` section.*builder_config\(\)"):
    builders.make_builder("demo", str(tmp_path), str(tmp_path / "out"), c)
