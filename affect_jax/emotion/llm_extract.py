"""Emotion labels and sentiment from free text by a local LLM, as the official pipeline does it.

  llm = LlmExtractor.load(path, settings)     # settings: configs/unibench.py llm_config()
  cells = llm.label_cells(completions)        # "[happy, excited]" style answers -> "happy, excited"
  polarity = llm.polarities(cells)            # int32[N]: +1 positive, -1 negative, 0 neutral

`path` is a Hugging Face Qwen2 / Qwen2.5 folder (config.json + safetensors) or a launch.convert
checkpoint holding an `llm` component; the tokenizer comes from settings.tokenizer_dir, else
the folder itself, else (converted checkpoints) the folder it was converted from.
Each text is put into the official prompt (settings.label_prompt / sentiment_prompt, the
MER-UniBench extraction prompts) as the one user message of the tokenizer's chat template (the
template adds its default system message, as the official code's single user message does;
a tokenizer without a template gets the prompt as plain text), and answered with the official
settings: temperature 0.7, top-p 0.8, repetition penalty 1.05, at most 512 new tokens
(affect_jax/rl/sampler.py; settings.greedy for argmax decoding).
Reading the answers:
- labels: a leading "Output" / "Input" word and ":" are stripped (as the official
  post-processing does); the first "[...]" span (to the end when "]" is missing), else the
  whole answer, is read with the official list rule; the labels are written as "a, b".
- sentiment: the candidate (positive / negative / neutral) that occurs first in the lowercased
  answer; neutral when none does.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from affect_jax.checkpoints import hf, hf_qwen2, params_io
from affect_jax.checkpoints.safetensors_io import CheckpointError
from affect_jax.data import tokenizer as tokenizer_lib
from affect_jax.emotion import extract
from affect_jax.emotion import labels as labels_lib
from affect_jax.models import qwen2
from affect_jax.models.lora import LoraConfig
from affect_jax.rl import sampler

POLARITY = {"positive": 1, "negative": -1, "neutral": 0}


def _tokenizer(path: pathlib.Path, settings, source: str = ""):
  for folder in (settings.tokenizer_dir, str(path), source):
    if folder and (pathlib.Path(folder) / "tokenizer.json").is_file():
      return tokenizer_lib.load_tokenizer(folder)
  raise CheckpointError(f"--extractor_checkpoint={path}: no tokenizer.json in it"
                        f"{' or in ' + source if source else ''}; set "
                        "--config.unibench.llm.tokenizer_dir to the LLM's tokenizer folder.")


def load_llm(path: str, settings: ml_collections.ConfigDict):
  """(Qwen2Config, params, tokenizer) of an HF folder or a launch.convert checkpoint."""
  p = pathlib.Path(path)
  dtype = settings.dtype or None
  if (p / "config.json").is_file():
    config, params = hf_qwen2.load(p, dtype=dtype)
    tok = _tokenizer(p, settings)
  elif (p / "meta.json").is_file():
    meta = params_io.read_meta(p)
    entry = meta.get("components", {}).get("llm")
    if entry is None:
      raise CheckpointError(f"--extractor_checkpoint={p}: the checkpoint has no llm component "
                            f"(it has {sorted(meta.get('components', {}))}); convert the "
                            "Qwen2.5-Instruct folder with launch.convert --hf_dir=...")
    config = hf.config_from_hf("llm", entry["hf_config"])
    if "lora" in entry:
      lora = dict(entry["lora"], targets=tuple(entry["lora"]["targets"]))
      config = dataclasses.replace(config, lora=LoraConfig(**lora))
    params = params_io.load(p)[0]["llm"]
    if dtype:
      config = dataclasses.replace(config, dtype=dtype, param_dtype=dtype)
      params = jax.tree.map(lambda x: x.astype(dtype), params)
    tok = _tokenizer(p, settings, entry.get("source", ""))
  else:
    raise CheckpointError(f"--extractor_checkpoint={p}: neither a Hugging Face Qwen2 folder "
                          "(config.json + safetensors) nor a launch.convert checkpoint "
                          "(meta.json + params/).")
  if len(tok) > config.vocab_size:
    raise CheckpointError(f"--extractor_checkpoint={p}: the tokenizer has {len(tok)} tokens but "
                          f"the model's vocabulary {config.vocab_size}; give the model's own "
                          "tokenizer (--config.unibench.llm.tokenizer_dir).")
  return config, params, tok


def response_cell(response: str) -> str:
  """An extraction answer -> the label cell "a, b" (module doc)."""
  text = response.strip()
  for word in ("output", "input"):
    if text.lower().startswith(word):
      text = text[len(word):].strip()
  text = text.lstrip(":：").strip()
  start = text.find("[")
  if start >= 0:
    end = text.find("]", start)
    text = text[start:end + 1] if end >= 0 else text[start:]
  return extract.to_cell(labels_lib.parse_labels(text.replace("\n", " ")))


def response_polarity(response: str, candidates: Sequence[str]) -> int:
  """+1 / -1 / 0 of the candidate that occurs first in the answer (0 when none does)."""
  text = response.lower()
  found = [(text.find(c), c) for c in candidates if c in text]
  return POLARITY[min(found)[1]] if found else 0


class LlmExtractor:
  """A local LLM answering the official extraction prompts (module doc)."""

  def __init__(self, config: qwen2.Qwen2Config, params, tokenizer,
               settings: ml_collections.ConfigDict):
    unknown = [c for c in settings.sentiments if c not in POLARITY]
    if unknown:
      raise ValueError(f"unibench.llm.sentiments: {unknown} are not among {sorted(POLARITY)}.")
    self.config, self.params, self.tokenizer, self.settings = config, params, tokenizer, settings
    vocab = tokenizer.get_vocab()
    eos = {int(vocab[t]) for t in settings.stop_tokens if t in vocab}
    if tokenizer.eos_token_id is not None:
      eos.add(int(tokenizer.eos_token_id))
    if not eos:
      raise ValueError(f"the extractor's tokenizer has none of the stop tokens "
                       f"{list(settings.stop_tokens)} and no EOS; set "
                       "--config.unibench.llm.stop_tokens.")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    self.sampling = sampler.SamplingConfig(
        max_new_tokens=int(settings.max_new_tokens), temperature=float(settings.temperature),
        top_p=float(settings.top_p), greedy=bool(settings.greedy),
        repetition_penalty=float(settings.repetition_penalty), eos_ids=tuple(sorted(eos)),
        pad_id=int(pad), buckets=tuple(settings.buckets))
    self._generate = jax.jit(lambda p, t, m, r: sampler.sample(
        p, config, self.sampling, prompt_mask=m, rng=r, tokens=t)[0])

  @classmethod
  def load(cls, path: str, settings: ml_collections.ConfigDict) -> "LlmExtractor":
    return cls(*load_llm(path, settings), settings)

  def prompt_ids(self, text: str) -> list[int]:
    if getattr(self.tokenizer, "chat_template", None):
      text = self.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                add_generation_prompt=True, tokenize=False)
    return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

  def answers(self, prompts: Sequence[str]) -> list[str]:
    """The LLM's answer to each prompt (special tokens dropped)."""
    size = int(self.settings.batch_size)
    out = []
    for start in range(0, len(prompts), size):
      ids = [self.prompt_ids(p) for p in prompts[start:start + size]]
      n = len(ids)
      ids += [ids[0]] * (size - n)          # one compiled batch shape
      tokens, mask = sampler.pad_prompts(ids, self.sampling)
      result = self._generate(self.params, jnp.asarray(tokens), jnp.asarray(mask),
                              jax.random.key(int(self.settings.seed) + start))
      toks, lengths = np.asarray(result.tokens), np.asarray(result.lengths)
      out += [self.tokenizer.decode(toks[j, :lengths[j]], skip_special_tokens=True)
              for j in range(n)]
    return out

  def label_cells(self, texts: Sequence[str]) -> list[str]:
    return [response_cell(a) for a in self.answers(
        [self.settings.label_prompt.format(text=t) for t in texts])]

  def polarities(self, cells: Sequence[str]) -> np.ndarray:
    answers = self.answers([self.settings.sentiment_prompt.format(text=c) for c in cells])
    return np.asarray([response_polarity(a, self.settings.sentiments) for a in answers],
                      np.int32)
