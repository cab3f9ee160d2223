"""The grain input pipeline: a built dataset -> tokenized, bucketed, batched numpy dicts.

  source, meta = builders.load_source(path, split)        # or features.FeatureSource(...)
  loader = sft_loader(source, meta, tokenizer, cfg)       # grain.DataLoader
  it = iter(loader); batch = next(it)
  state = it.get_state()                                  # bytes (JSON), store with a checkpoint
  it = restore_iterator(loader, state)                    # continues exactly where it was

Order of operations (grain 0.2 DataLoader): IndexSampler (this host's shard of the records,
shuffled with `seed` anew each epoch, repeated num_epochs times or forever) -> Map (decode
bytes, load / normalise media, encode the prompt and target with prompts.py) -> Batch (pad
the token sequences to the smallest configured bucket, stack media) -> optional worker
processes (worker_count) that prefetch batches. SFT loaders first drop the records the official
loader skips (prompt + target over prompt.max_length tokens; drop_too_long logs and returns
each as a too_long records.Skip). Everything is deterministic given the seed, the shard and
the worker count; the iterator state records the position.

Sharding: each JAX process reads a disjoint, contiguous part of the records (its index and
count from grain ShardByJaxProcess, or explicit shard_index / shard_count); the parts
together cover the dataset, their sizes differing by at most one (shard_drop_remainder=False),
or are equal-sized with the remainder dropped (True). Shuffling is within a host's part.

SFT batch (B = batch_size, L = the smallest prompt.sequence_buckets length that fits):
  tokens int32[B, L], attention_mask bool[B, L] (left-padded), loss_mask bool[B, L]
  (target tokens and <eos>), example_mask bool[B] (False on padding rows of a last partial
  batch), names str[B], + media. A row is <bos> prompt target <eos> (prompts.encode_example).
GRPO prompt batch (P = the smallest prompt.prompt_buckets length that fits):
  prompt_tokens int32[B, P] (left-padded; prompts.encode_prompt), prompt_mask bool[B, P],
  example_mask bool[B], names str[B], gt_text str[B] (ground-truth labels joined by ', ';
  '' = neutral), basic_label str[B], valence float32[B] (NaN when absent), + `label_encoder` outputs
  (gt_ids [B, M] for an array, or each key of a returned dict), + media.
Media: raw / paths datasets give frames float32[B, F, S, S, 3] (CLIP-normalised) and
windows float32[B, K, W] (K audio windows of W samples); feature-cache datasets give
video float32[B, F, Dv] and audio float32[B, K, Da] (the inputs of
affectgpt.prompt_embeds). String arrays are host-side: `device_arrays` drops them.
Numbers: the data section (configs/data.py `media`, `prompt`, `tokenizer`, `pipeline`).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from absl import logging
import grain
import ml_collections
import numpy as np

from affect_jax.data import media
from affect_jax.data import prompts
from affect_jax.data.builders import records

LabelEncoder = Callable[[Sequence[str]], "np.ndarray | Mapping[str, np.ndarray]"]
TEXT_FIELDS = ("name", "subtitle", "reason", "basic_label", "task", "visual_path", "audio_path")


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def decode_example(example: Mapping[str, Any]) -> dict[str, Any]:
  """TFDS values -> Python: bytes -> str, labels -> list[str]; arrays unchanged."""
  out = dict(example)
  for key in TEXT_FIELDS:
    if key in out:
      out[key] = _text(out[key])
  if "labels" in out:
    out["labels"] = [_text(v) for v in out["labels"]]
  return out


def _hubert_input(windows: np.ndarray, m: ml_collections.ConfigDict) -> np.ndarray:
  """media.hubert_input with the config's settings (normalised as the HuBERT checkpoint's
  preprocessor says when media.audio_normalize is 'checkpoint')."""
  normalize = media.normalize_enabled(m.audio_normalize, m.hubert_do_normalize)
  return media.hubert_input(windows, m.window_zero_mean, normalize, m.audio_normalize_span,
                            m.audio_normalize_epsilon)


def load_media(example: Mapping[str, Any], media_cfg: ml_collections.ConfigDict,
               meta: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The model's media inputs of one decoded example.

  Args:
    example: a decode_example output with frames + audio (raw), visual_path + audio_path
      (paths) or video_features + audio_features (feature cache).
    media_cfg: configs/data.py `media` (normalisation, windows; frame settings in paths mode).
    meta: the dataset's metadata (builders.load_source), for visual_source.
  Returns:
    {'frames': float32[F, S, S, 3], 'windows': float32[K, W] (HuBERT's input)} or
    {'video': float32[F, Dv], 'audio': float32[K, Da]}.
  """
  m = media_cfg
  if "video_features" in example:
    return {"video": np.asarray(example["video_features"], np.float32),
            "audio": np.asarray(example["audio_features"], np.float32)}
  if "frames" in example:
    frames = media.normalize_images(example["frames"], m.image_mean, m.image_std)
    windows = media.audio_windows(example["audio"], m.sample_rate, m.num_windows,
                                  m.window_seconds)
    return {"frames": frames, "windows": _hubert_input(windows, m)}
  if "visual_path" in example:
    if meta.get("visual_source", "frames") == "faces":
      frames = media.read_face_crops(example["visual_path"], m.num_frames, m.image_size,
                                     m.image_mean, m.image_std, m.frame_sampling,
                                     m.face_channel_order, m.face_resize)
    else:
      frames = media.read_video_frames(example["visual_path"], m.num_frames, m.image_size,
                                       m.image_mean, m.image_std, m.frame_sampling,
                                       m.frame_resize)
    windows = media.read_audio_windows(example["audio_path"], m.sample_rate, m.num_windows,
                                       m.window_seconds)
    return {"frames": frames, "windows": _hubert_input(windows, m)}
  raise ValueError(f"example {example.get('name', '?')!r} has no media (keys {sorted(example)});"
                   f" expected frames + audio, visual_path + audio_path or *_features.")


class EncodeSFT(grain.transforms.Map):
  """Example -> {prompt_ids, target_ids, name, media} (prompts.encode_example)."""

  def __init__(self, tokenizer, cfg: ml_collections.ConfigDict, meta: Mapping[str, Any],
               neutral_label: str):
    self._tokenizer = tokenizer
    self._cfg = cfg
    self._meta = dict(meta)
    self._neutral = neutral_label

  def map(self, element):
    ex = decode_example(element)
    pieces = prompts.encode_example(
        self._tokenizer, ex["subtitle"], ex["labels"] or [self._neutral], ex["reason"],
        self._cfg.prompt, dict(self._cfg.tokenizer.special_tokens))
    if pieces is None:
      raise ValueError(f"example {ex['name']!r} exceeds prompt.max_length="
                       f"{self._cfg.prompt.max_length} tokens; read SFT records through "
                       f"sft_loader, which skips such examples (drop_too_long).")
    prompt_ids, target_ids = pieces
    return dict(prompt_ids=np.asarray(prompt_ids, np.int32),
                target_ids=np.asarray(target_ids, np.int32), name=ex["name"],
                **load_media(ex, self._cfg.media, self._meta))


class EncodePrompt(grain.transforms.Map):
  """Example -> {prompt_ids, gt_text, basic_label, valence, name, gt..., media}."""

  def __init__(self, tokenizer, cfg: ml_collections.ConfigDict, meta: Mapping[str, Any],
               label_encoder: LabelEncoder | None = None):
    self._tokenizer = tokenizer
    self._cfg = cfg
    self._meta = dict(meta)
    self._label_encoder = label_encoder

  def text(self, element) -> dict[str, Any]:
    """The example's fields without media (prompt_ids, name, gt_text, basic_label, valence):
    what an evaluation needs of every clip before it reads any clip's media."""
    ex = decode_example(element)
    ids = prompts.encode_prompt(self._tokenizer, ex["subtitle"], self._cfg.prompt,
                                dict(self._cfg.tokenizer.special_tokens))
    return dict(prompt_ids=np.asarray(ids, np.int32), name=ex["name"],
                gt_text=self._cfg.prompt.label_separator.join(ex["labels"]),
                basic_label=ex.get("basic_label", ""),
                valence=np.float32(ex.get("valence", np.nan)))

  def media(self, element) -> dict[str, np.ndarray]:
    """The example's media inputs (load_media)."""
    return load_media(decode_example(element), self._cfg.media, self._meta)

  def map(self, element):
    ex = decode_example(element)
    out = dict(self.text(ex), **load_media(ex, self._cfg.media, self._meta))
    if self._label_encoder is not None:
      encoded = self._label_encoder(list(ex["labels"]))
      if isinstance(encoded, Mapping):
        overlap = sorted(set(encoded) & set(out))
        if overlap:
          raise ValueError(f"label_encoder returned keys {overlap} that the pipeline uses; "
                           f"rename them.")
        out.update({k: np.asarray(v) for k, v in encoded.items()})
      else:
        out["gt_ids"] = np.asarray(encoded)
    return out


def _fill(examples: Sequence[Mapping[str, Any]], batch_size: int
          ) -> tuple[list[Mapping[str, Any]], np.ndarray]:
  """Pads a partial batch with copies of its last example; example_mask bool[batch_size]."""
  n = len(examples)
  mask = np.zeros(batch_size, bool)
  mask[:n] = True
  return list(examples) + [examples[-1]] * (batch_size - n), mask


def _stack_rest(examples: Sequence[Mapping[str, Any]], skip: Sequence[str]) -> dict:
  out = {}
  for key in examples[0]:
    if key in skip:
      continue
    values = [e[key] for e in examples]
    shapes = {np.shape(v) for v in values}
    if len(shapes) > 1:
      raise ValueError(f"batch field '{key}': examples have shapes {sorted(shapes)}; a "
                       f"label_encoder must return a fixed size, media one shape per dataset.")
    out["names" if key == "name" else key] = np.stack([np.asarray(v) for v in values])
  return out


class CollateSFT:
  """Batch fn: SFT examples -> the SFT batch (module doc)."""

  def __init__(self, prompt_cfg: ml_collections.ConfigDict, pad_id: int, batch_size: int):
    self._cfg = prompt_cfg
    self._pad = int(pad_id)
    self._batch_size = int(batch_size)

  def __call__(self, examples):
    examples, mask = _fill(examples, self._batch_size)
    out = prompts.sft_batch([(e["prompt_ids"], e["target_ids"]) for e in examples], self._cfg,
                            self._pad)
    out["example_mask"] = mask
    out.update(_stack_rest(examples, ("prompt_ids", "target_ids")))
    return out


class CollatePrompts:
  """Batch fn: prompt examples -> the GRPO prompt batch (module doc)."""

  def __init__(self, prompt_cfg: ml_collections.ConfigDict, pad_id: int, batch_size: int):
    self._cfg = prompt_cfg
    self._pad = int(pad_id)
    self._batch_size = int(batch_size)

  def __call__(self, examples):
    examples, mask = _fill(examples, self._batch_size)
    tokens, prompt_mask = prompts.prompt_batch([e["prompt_ids"] for e in examples], self._cfg,
                                               self._pad)
    out = dict(prompt_tokens=tokens, prompt_mask=prompt_mask, example_mask=mask)
    out.update(_stack_rest(examples, ("prompt_ids",)))
    return out


def shard_options(pcfg: ml_collections.ConfigDict) -> grain.sharding.ShardOptions:
  """This host's shard: explicit (shard_index, shard_count) or the JAX process's."""
  drop = bool(pcfg.shard_drop_remainder)
  if pcfg.shard_count == -1 and pcfg.shard_index == -1:
    return grain.sharding.ShardByJaxProcess(drop_remainder=drop)
  if not 0 <= pcfg.shard_index < pcfg.shard_count:
    raise ValueError(f"pipeline.shard_index={pcfg.shard_index}, shard_count="
                     f"{pcfg.shard_count}: need 0 <= index < count (or both -1 for the JAX "
                     f"process index / count).")
  return grain.sharding.ShardOptions(int(pcfg.shard_index), int(pcfg.shard_count), drop)


def _check(pcfg: ml_collections.ConfigDict, num_records: int) -> None:
  if num_records < 1:
    raise ValueError("pipeline: the data source is empty; build the dataset first "
                     "(python -m launch.prepare) and check its report.")
  if pcfg.batch_size < 1:
    raise ValueError(f"pipeline.batch_size={pcfg.batch_size}: must be >= 1.")
  if not 0 <= pcfg.seed < 2**32:
    raise ValueError(f"pipeline.seed={pcfg.seed}: must be a non-negative 32-bit int.")
  if pcfg.num_epochs < 0 or pcfg.worker_count < 0:
    raise ValueError(f"pipeline.num_epochs={pcfg.num_epochs}, worker_count="
                     f"{pcfg.worker_count}: both must be >= 0.")


def shard_range(num_records: int, shard: grain.sharding.ShardOptions) -> tuple[int, int]:
  """[start, end) of this shard's records: contiguous parts whose sizes differ by at most one
  (drop_remainder: all of size num_records // count, the rest unused)."""
  count, index = shard.shard_count, shard.shard_index
  per, rest = divmod(num_records, count)
  if shard.drop_remainder:
    return index * per, (index + 1) * per
  start = index * per + min(index, rest)
  return start, start + per + (index < rest)


class ShardSource:
  """records[start:end] of a random-access source, as a random-access source."""

  def __init__(self, source, start: int, end: int):
    self._source, self._start, self._end = source, int(start), int(end)

  def __len__(self) -> int:
    return self._end - self._start

  def __getitem__(self, index: int):
    if not 0 <= index < len(self):
      raise IndexError(f"ShardSource index {index} out of range [0, {len(self)}).")
    return self._source[self._start + int(index)]

  def __repr__(self) -> str:
    return f"ShardSource({self._source!r}, {self._start}, {self._end})"


class IndexedSource:
  """records[indices] of a random-access source, as a random-access source."""

  def __init__(self, source, indices: Sequence[int]):
    self._source, self._indices = source, [int(i) for i in indices]

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: int):
    return self._source[self._indices[int(index)]]

  def __repr__(self) -> str:
    return f"IndexedSource({self._source!r}, {len(self._indices)} records)"


def drop_too_long(source, tokenizer, cfg: ml_collections.ConfigDict, neutral_label: str,
                  where: str = "SFT records") -> tuple[Any, list[records.Skip]]:
  """The records the official loader trains on, and one too_long Skip (logged) per other.

  A record is skipped when its prompt + target exceed prompt.max_length tokens
  (prompts.within_max_length; the official __getitem__ raises "too long text_input" for it).
  Returns:
    (the source itself when nothing is skipped, else an IndexedSource of the kept records;
    the skips, `where` as their file and the 1-based record number as their row).
  """
  specials = dict(cfg.tokenizer.special_tokens)
  keep, skipped = [], []
  for i in range(len(source)):
    ex = decode_example({k: v for k, v in source[i].items() if k in TEXT_FIELDS + ("labels",)})
    prompt = prompts.prompt_ids(tokenizer, ex["subtitle"], cfg.prompt, specials)
    target = prompts.target_ids(tokenizer, ex["labels"] or [neutral_label], ex["reason"],
                                cfg.prompt)
    if prompts.within_max_length(prompt, target, cfg.prompt):
      keep.append(i)
      continue
    skipped.append(records.log_skip(records.Skip(
        where, i + 1, ex["name"], "too_long",
        f"prompt {len(prompt)} + target {len(target)} tokens (each cut at "
        f"{cfg.prompt.max_length}) exceed prompt.max_length={cfg.prompt.max_length}")))
  if skipped and not keep:
    raise ValueError(f"{where}: all {len(source)} records exceed prompt.max_length="
                     f"{cfg.prompt.max_length} tokens (prompt + target); raise it.")
  if skipped:
    logging.info("%s: %d of %d records skipped (too_long)", where, len(skipped), len(source))
  return (source if not skipped else IndexedSource(source, keep)), skipped


def check_video_prompt(prompt_cfg: ml_collections.ConfigDict, meta: Mapping[str, Any]) -> None:
  """The prompt's video sentence must name the dataset's visual input (faces / frames)."""
  source = meta.get("visual_source")
  if source is not None and source != prompt_cfg.video_prompt:
    raise ValueError(f"prompt.video_prompt='{prompt_cfg.video_prompt}' but the dataset holds "
                     f"{source} (built with builder.visual_source='{source}'); set "
                     f"prompt.video_prompt='{source}' or rebuild the dataset.")


def make_loader(source, transform: grain.transforms.Map, batch_fn: Callable,
                pcfg: ml_collections.ConfigDict) -> grain.DataLoader:
  """grain.DataLoader: this host's shard -> shuffle -> transform -> batch -> workers.

  The shard is cut here (ShardSource) rather than by the sampler, so that a finite run
  (num_epochs > 0) reads every record of the shard once per epoch even when the shards'
  sizes differ.
  """
  _check(pcfg, len(source))
  start, end = shard_range(len(source), shard_options(pcfg))
  if end <= start:
    raise ValueError(f"pipeline: this host's shard of {len(source)} records is empty "
                     f"({shard_options(pcfg)}); use fewer hosts or more data.")
  local = ShardSource(source, start, end)
  sampler = grain.samplers.IndexSampler(
      num_records=len(local), shard_options=grain.sharding.NoSharding(),
      shuffle=bool(pcfg.shuffle), num_epochs=int(pcfg.num_epochs) or None,
      seed=int(pcfg.seed))
  return grain.DataLoader(
      data_source=local, sampler=sampler,
      operations=[transform, grain.transforms.Batch(int(pcfg.batch_size),
                                                    bool(pcfg.drop_remainder), batch_fn)],
      worker_count=int(pcfg.worker_count), worker_buffer_size=int(pcfg.worker_buffer_size),
      shard_options=grain.sharding.NoSharding(),
      read_options=grain.ReadOptions(num_threads=int(pcfg.read_threads),
                                     prefetch_buffer_size=int(pcfg.read_buffer)))


def _pipeline_cfg(cfg: ml_collections.ConfigDict, pcfg) -> ml_collections.ConfigDict:
  if pcfg is not None:
    return pcfg
  if "pipeline" not in cfg:
    raise ValueError("the data config has no `pipeline` section; add it (configs/data.py "
                     "pipeline_config()) or pass the pipeline settings (pcfg).")
  return cfg.pipeline


def _pad_id(tokenizer, cfg: ml_collections.ConfigDict) -> int:
  return int(tokenizer.convert_tokens_to_ids(cfg.tokenizer.special_tokens["pad"]))


def sft_loader(source, meta: Mapping[str, Any], tokenizer, cfg: ml_collections.ConfigDict,
               pcfg: ml_collections.ConfigDict | None = None,
               skipped: list | None = None) -> grain.DataLoader:
  """Loader of SFT batches (module doc); records longer than prompt.max_length are skipped
  (drop_too_long).

  Args:
    source: random-access records (builders.load_source, features.FeatureSource, or any
      sequence of example dicts).
    meta: the dataset's metadata (builders.load_source).
    tokenizer: a transformers tokenizer with the config's special tokens.
    cfg: the data section (configs/data.py: media, prompt, tokenizer, pipeline).
    pcfg: pipeline settings (default cfg.pipeline).
    skipped: when given, the too_long records.Skip of each skipped record are appended.
  """
  pcfg = _pipeline_cfg(cfg, pcfg)
  check_video_prompt(cfg.prompt, meta)
  source, skips = drop_too_long(source, tokenizer, cfg, pcfg.neutral_label)
  if skipped is not None:
    skipped.extend(skips)
  return make_loader(source, EncodeSFT(tokenizer, cfg, meta, pcfg.neutral_label),
                     CollateSFT(cfg.prompt, _pad_id(tokenizer, cfg), pcfg.batch_size), pcfg)


def prompt_loader(source, meta: Mapping[str, Any], tokenizer, cfg: ml_collections.ConfigDict,
                  pcfg: ml_collections.ConfigDict | None = None,
                  label_encoder: LabelEncoder | None = None) -> grain.DataLoader:
  """Loader of GRPO / evaluation prompt batches (module doc).

  Args:
    label_encoder: labels (list[str], [] = neutral) -> a fixed-size int array (batched as
      gt_ids [B, M]) or a dict of fixed-size arrays (each batched under its key), e.g. the
      reward's surface ids and label count. None: only gt_text is given.
    (others as sft_loader)
  """
  pcfg = _pipeline_cfg(cfg, pcfg)
  check_video_prompt(cfg.prompt, meta)
  return make_loader(source, EncodePrompt(tokenizer, cfg, meta, label_encoder),
                     CollatePrompts(cfg.prompt, _pad_id(tokenizer, cfg), pcfg.batch_size), pcfg)


def restore_iterator(loader: grain.DataLoader, state: bytes | str) -> grain.DataLoaderIterator:
  """A new iterator of `loader` positioned where the one that gave `state` (get_state()) was.

  The loader must be built with the same source, sharding, seed and worker count.
  """
  it = iter(loader)
  it.set_state(state.encode() if isinstance(state, str) else state)
  return it


def device_arrays(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The numeric and boolean arrays of a batch (strings are host-side only)."""
  return {k: v for k, v in batch.items()
          if isinstance(v, np.ndarray) and v.dtype.kind in "biuf"}
