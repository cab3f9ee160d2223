"""Held-out evaluation: greedy generation from the multimodal prompts, then the EW metric.

  completions = generate(params, config, sampling, batches)       # list[str], one per row
  scores = score_open_set(gt_cells, completions, ew_tables)       # ew_f, ew_precision, ...

Labels are read from the <answer> span (the R1 output format); a completion without one
predicts nothing (precision = recall = 0 for that sample, as the official metric does for an
empty prediction).
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import jax
import numpy as np

from affect_jax import distributed, sharding
from affect_jax.emotion import labels as labels_lib
from affect_jax.emotion import metrics as metrics_lib
from affect_jax.models import affectgpt
from affect_jax.generation import sampler


def make_generate(config: affectgpt.AffectGPTConfig, sampling: sampler.SamplingConfig,
                  use_lora: bool = True, mesh=None):
  """jitted (params, batch, rng) -> SampleOutput for a batch of multimodal prompts
  (prompt_tokens int32[B, P], prompt_mask bool[B, P], video [B, F, Dv], audio [B, K, Da]).

  With a mesh the params and the batch keep their shardings (batch split on its rows) and the
  output comes back replicated, so every process can read all completions.
  """

  def gen(params, batch, rng):
    embeds = affectgpt.prompt_embeds(params, config, batch["prompt_tokens"], batch["video"],
                                     batch["audio"])
    out, _ = sampler.sample(params["llm"], config.llm, sampling,
                            prompt_mask=batch["prompt_mask"], rng=rng, embeds=embeds,
                            use_lora=use_lora)
    return out

  if mesh is None:
    return jax.jit(gen)
  return jax.jit(gen, out_shardings=sharding.replicated(mesh))


def pad_rows(batch: Mapping[str, np.ndarray], rows: int) -> tuple[dict, int]:
  """Repeats the first row so every array has `rows` rows (one compiled shape); returns the
  padded batch and the number of real rows."""
  n = len(next(iter(batch.values())))
  if n > rows:
    raise ValueError(f"a batch of {n} rows exceeds the evaluation batch size {rows}.")
  if n == rows:
    return dict(batch), n
  return {k: np.concatenate([v, np.repeat(v[:1], rows - n, axis=0)]) for k, v in
          batch.items()}, n


def generate(params, generate_fn, batches: Iterable[Mapping[str, np.ndarray]], tokenizer,
             batch_size: int, seed: int = 0, mesh=None, rules=None) -> list[str]:
  """Completion texts (special tokens dropped) for every real row of `batches`, in order.

  With a mesh (and the rules), each batch goes in as global arrays split on the rows: every
  process holds all of `batches` and feeds its own rows (distributed.local_rows), so
  batch_size must be a multiple of the mesh's data x fsdp and of the process count.
  """
  texts = []
  for i, batch in enumerate(batches):
    padded, n = pad_rows({k: v for k, v in batch.items() if k in
                          ("prompt_tokens", "prompt_mask", "video", "audio")}, batch_size)
    if mesh is not None:
      rows = distributed.local_rows(batch_size)
      padded = distributed.global_batch({k: v[rows] for k, v in padded.items()}, mesh, rules)
    with sharding.active(mesh, rules):
      out = generate_fn(params, padded, jax.random.key(seed + i))
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    for j in range(n):
      texts.append(tokenizer.decode(tokens[j, :lengths[j]], skip_special_tokens=True))
  return texts


def answers(completions: Sequence[str]) -> list[str]:
  """The <answer> content of each completion ('' when there is none)."""
  out = []
  for text in completions:
    answer = labels_lib.split_completion(text).answer
    out.append(answer if answer is not None else "")
  return out


def score_open_set(gt_cells: Sequence[str], completions: Sequence[str], ew_tables) -> dict:
  """EW-F / precision / recall (percent, level 1, 5 wheels) and the format rate."""
  if len(gt_cells) != len(completions):
    raise ValueError(f"{len(gt_cells)} ground-truth rows but {len(completions)} completions.")
  scores = metrics_lib.ov_scores(list(gt_cells), answers(completions), ew_tables)
  out = {k: 100.0 * float(scores[k]) for k in ("ew_f", "ew_precision", "ew_recall")}
  out["n_scored"] = int(scores.get("n_scored", len(gt_cells)))
  out["format_rate"] = 100.0 * float(np.mean([labels_lib.format_ok(t) for t in completions]))
  out["mean_labels"] = float(np.mean([len(labels_lib.parse_labels(a)) for a in
                                      answers(completions)]))
  return out
