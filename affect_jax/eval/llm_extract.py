"""Emotion labels and sentiment from free text by a local LLM, as the official pipeline does it.

  llm = LlmExtractor.load(path, settings)     # settings: configs/unibench.py llm_config()
  cells = llm.label_cells(completions)        # "[happy, excited]" style answers -> "happy, excited"
  polarity = llm.polarities(cells)            # int32[N]: +1 positive, -1 negative, 0 neutral

`path` is a Hugging Face Qwen2 / Qwen2.5 folder (config.json + safetensors) or a launch.convert
checkpoint holding an `llm` component; the tokenizer comes from settings.tokenizer_dir, else
the folder itself, else (converted checkpoints) the folder it was converted from.
Each text is put into the official prompt (settings.label_prompt / sentiment_prompt, the
MER-UniBench extraction prompts word for word) as the user message of the tokenizer's chat
template, after settings.system_message when it is set (with none the template adds its
default system message, as the official evaluation's vLLM calls do; a tokenizer without a
template gets the prompt as plain text), and answered with the official settings: temperature
0.7, top-p 0.8, repetition penalty 1.05, at most 512 new tokens (affect_jax/generation/sampler.py;
settings.greedy for argmax decoding). With a mesh (launch.evaluate passes config.mesh) the
weights lie on their shardings under the rules and each batch's prompts are split over the
data axes (its rows rounded up to split evenly, eval/batches.py compiled_rows).
Reading the answers (settings.parsing):
- 'official' (AffectGPT evaluation.py): each answer goes through `official_postprocess`
  (func_postprocess_qwen: strip; each of OFFICIAL_PREFIXES, in its order, removed once when
  the text starts with it; strip; one leading ":" or "："; strip; line breaks removed). The
  labels answer is the label cell as it is (the metric reads it with the official list rule)
  and is what the sentiment prompt gets; a sentiment answer counts only when it equals a
  candidate exactly ("positive"; not "Positive." nor "positive, negative"), anything else
  scores as neutral (0), as evaluation.py maps it.
- 'lenient': labels: a leading "Output" / "Input" word and ":" are stripped; the first "[...]"
  span (to the end when "]" is missing), else the whole answer, is read with the official
  list rule; the labels are written as "a, b". Sentiment: the candidate that occurs first in
  the lowercased answer; neutral when none does.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from affect_jax import distributed, sharding
from affect_jax.checkpoints import hf, hf_qwen2, params_io
from affect_jax.checkpoints.safetensors_io import CheckpointError
from affect_jax.data import tokenizer as tokenizer_lib
from affect_jax.emotion import extract
from affect_jax.emotion import labels as labels_lib
from affect_jax.eval import batches
from affect_jax.models import qwen2
from affect_jax.models.lora import LoraConfig
from affect_jax.generation import sampler

POLARITY = {"positive": 1, "negative": -1, "neutral": 0}
PARSINGS = ("lenient", "official")
# func_postprocess_qwen's leading words, removed in this order (each at most once).
OFFICIAL_PREFIXES = ("输入", "输出", "翻译", "让我们来翻译一下：", "output", "Output", "input",
                     "Input")


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


def official_postprocess(response: str) -> str:
  """An answer as the official evaluation stores it (module doc, 'official')."""
  text = response.strip()
  for prefix in OFFICIAL_PREFIXES:
    if text.startswith(prefix):
      text = text[len(prefix):]
  text = text.strip()
  for colon in (":", "："):
    if text.startswith(colon):
      text = text[len(colon):]
  return text.strip().replace("\n", "").strip()


def official_polarity(response: str, candidates: Sequence[str]) -> int:
  """+1 / -1 / 0 when the post-processed answer is exactly a candidate; 0 otherwise."""
  text = official_postprocess(response)
  return POLARITY[text] if text in candidates else 0


def response_polarity(response: str, candidates: Sequence[str]) -> int:
  """+1 / -1 / 0 of the candidate that occurs first in the answer (0 when none does)."""
  text = response.lower()
  found = [(text.find(c), c) for c in candidates if c in text]
  return POLARITY[min(found)[1]] if found else 0


class LlmExtractor:
  """A local LLM answering the official extraction prompts (module doc)."""

  def __init__(self, config: qwen2.Qwen2Config, params, tokenizer,
               settings: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None,
               rules: tuple | None = None):
    unknown = [c for c in settings.sentiments if c not in POLARITY]
    if unknown:
      raise ValueError(f"unibench.llm.sentiments: {unknown} are not among {sorted(POLARITY)}.")
    if settings.parsing not in PARSINGS:
      raise ValueError(f"unibench.llm.parsing='{settings.parsing}': expected one of {PARSINGS}.")
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
    self.mesh, self.rules = mesh, rules
    self.rows = batches.compiled_rows(int(settings.batch_size), mesh)
    sample = lambda p, t, m, r: sampler.sample(p, config, self.sampling, prompt_mask=m, rng=r,
                                               tokens=t)[0]
    if mesh is None:
      self._generate = jax.jit(sample)
    else:       # the weights on their shardings, the prompts split over the data axes
      self.rules = tuple(rules) if rules is not None else sharding.DEFAULT_RULES
      boxed = qwen2.abstract_params(config)
      sharding.check_divisible(boxed, mesh, self.rules, where="config.sharding_rules (the "
                               "LLM extractor)")
      self.params = distributed.put(params, sharding.shardings(boxed, mesh, self.rules))
      self._generate = jax.jit(sample, out_shardings=sharding.replicated(mesh))

  @classmethod
  def load(cls, path: str, settings: ml_collections.ConfigDict,
           mesh: jax.sharding.Mesh | None = None, rules: tuple | None = None
           ) -> "LlmExtractor":
    """The extractor of `path`; with a mesh its weights lie on their shardings there."""
    return cls(*load_llm(path, settings), settings, mesh, rules)

  def messages(self, text: str) -> list[dict]:
    """The chat of one prompt: the system message when set, then the prompt."""
    system = self.settings.system_message
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": text}]

  def prompt_ids(self, text: str) -> list[int]:
    if getattr(self.tokenizer, "chat_template", None):
      text = self.tokenizer.apply_chat_template(self.messages(text),
                                                add_generation_prompt=True, tokenize=False)
    return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

  def answers(self, prompts: Sequence[str]) -> list[str]:
    """The LLM's answer to each prompt (special tokens dropped). Batches of settings.batch_size
    prompts, compiled with `rows` rows (filler rows: copies of the first prompt); on a mesh
    every process passes the same prompts and feeds its own rows of each batch."""
    size = int(self.settings.batch_size)
    out = []
    for start in range(0, len(prompts), size):
      ids = [self.prompt_ids(p) for p in prompts[start:start + size]]
      n = len(ids)
      ids += [ids[0]] * (self.rows - n)     # one compiled batch shape
      tokens, mask = sampler.pad_prompts(ids, self.sampling)
      if self.mesh is None:
        tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
      else:
        mine = distributed.local_rows(self.rows)
        batch = distributed.global_batch({"t": tokens[mine], "m": mask[mine]}, self.mesh,
                                         self.rules)
        tokens, mask = batch["t"], batch["m"]
      with sharding.active(self.mesh, self.rules):
        result = self._generate(self.params, tokens, mask,
                                jax.random.key(int(self.settings.seed) + start))
      toks = distributed.host_value(result.tokens)
      lengths = distributed.host_value(result.lengths)
      out += [self.tokenizer.decode(toks[j, :lengths[j]], skip_special_tokens=True)
              for j in range(n)]
    return out

  def label_cells(self, texts: Sequence[str]) -> list[str]:
    read = official_postprocess if self.settings.parsing == "official" else response_cell
    return [read(a) for a in self.answers(
        [self.settings.label_prompt.format(text=t) for t in texts])]

  def polarities(self, cells: Sequence[str]) -> np.ndarray:
    read = official_polarity if self.settings.parsing == "official" else response_polarity
    answers = self.answers([self.settings.sentiment_prompt.format(text=c) for c in cells])
    return np.asarray([read(a, self.settings.sentiments) for a in answers], np.int32)
