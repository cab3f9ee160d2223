"""Test helpers for the emotion-wheel metric and rewards (no project code under test here).

- `ReferenceWheel`: an independent, straight-from-the-spec reading of a wheel folder's CSV
  files (PAPER_NOTES.md section 4), used as the reference the compiled tables must equal.
- small tokenizers trained offline: byte-level BPE (Qwen2-like regex or none, so merges can
  cross tags and separators) and a char-level one.
- random completions in the R1 format.
"""
from __future__ import annotations

import csv
import functools
import pathlib
import re

import numpy as np

SEP = re.compile("['\",]")


def official_list(cell: str) -> list[str]:
  """The official list parser, written out again from the spec."""
  if not cell:
    return []
  if cell[0] == "[":
    cell = cell[1:]
  if cell and cell[-1] == "]":
    cell = cell[:-1]
  return [x.strip() for x in SEP.split(cell) if x.strip() not in ("", ",")]


class ReferenceWheel:
  """Spec semantics over the CSV files of one folder (format, synonym, wheel1..5)."""

  def __init__(self, folder):
    folder = pathlib.Path(folder)
    self.formats = {}
    with open(folder / "format.csv", encoding="utf-8") as f:
      for row in csv.DictReader(f):
        for form in official_list(row["format"]):
          self.formats.setdefault(form, []).append(row["name"])
        self.formats.setdefault(row["name"], []).append(row["name"])
    self.synonyms = {}
    with open(folder / "synonym.csv", encoding="utf-8") as f:
      rows = list(csv.DictReader(f))
    runs = sorted({int(k[len("word_run"):]) for k in rows[0] if k.startswith("word_run")})
    for run in runs:
      for row in rows:
        word = row[f"word_run{run}"].strip().lower()
        self.synonyms.setdefault(word, set()).add(word)
        for s in official_list(row[f"synonym_run{run}"]):
          self.synonyms.setdefault(s.strip().lower(), set()).add(word)
    self.wheels = {}
    for k in range(1, 6):
      with open(folder / f"wheel{k}.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
      tree, cur = {}, ["", "", ""]
      for row in rows:
        for i, col in enumerate(("level1", "level2", "level3")):
          if row[col].strip():
            cur[i] = row[col]
        a, b, c = (x.lower().strip() for x in cur)
        tree.setdefault(a, {}).setdefault(b, []).append(c)
      for level in (1, 2):
        m = {}
        for a, kids in tree.items():
          m[a] = a if level == 1 else sorted(kids)[0]
          for b, leaves in kids.items():
            m[b] = a if level == 1 else b
            for c in leaves:
              m[c] = a if level == 1 else b
        self.wheels[(k, level)] = m

  def map(self, label: str, variant: str) -> str:
    """Cluster word of one lowercased, stripped label ('' when dropped)."""
    bases = self.formats.get(label)
    if not bases:
      return ""
    if variant == "case1":
      return sorted(bases)[0]
    if variant == "case2":
      return sorted(self.synonyms.get(sorted(bases)[0], {""}))[0]
    k, level = int(variant[5]), int(variant[-1])
    wheel = self.wheels[(k, level)]
    for c in sorted(c for b in bases for c in self.synonyms.get(b, ())):
      if c in wheel:
        return wheel[c]
    return ""

  def sample_f(self, gt_cell: str, pred_cell) -> float:
    """Per-sample F averaged over the 5 level-1 wheels (0 where undefined)."""
    total = 0.0
    gt_labels = [x.lower().strip() for x in official_list(gt_cell)]
    pred_labels = [x.lower().strip() for x in official_list(pred_cell or "")]
    for k in range(1, 6):
      g = {c for c in (self.map(x, f"wheel{k}_level1") for x in gt_labels) if c}
      p = {c for c in (self.map(x, f"wheel{k}_level1") for x in pred_labels) if c}
      if g and p and g & p:
        precision, recall = len(g & p) / len(p), len(g & p) / len(g)
        total += 2 * precision * recall / (precision + recall)
    return total / 5


# ------------------------------------------------------------------------------------------
# Tokenizers.

QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
               r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


@functools.lru_cache(maxsize=None)
def bpe_tokenizer(corpus: tuple, vocab_size: int = 1500, qwen_regex: bool = True,
                  added: tuple = ()):
  """A byte-level BPE tokenizer trained on `corpus`; qwen_regex=False merges across words,
  separators and tags."""
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast
  tok = Tokenizer(models.BPE())
  steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
  if qwen_regex:
    steps.insert(0, pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated"))
  tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(list(corpus), trainer)
  if added:
    from tokenizers import AddedToken
    tok.add_tokens([AddedToken(a, special=False, normalized=False) for a in added])
  return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


@functools.lru_cache(maxsize=None)
def char_tokenizer(alphabet: str):
  """One token per character of `alphabet` (+ [UNK]); decoding concatenates (Fuse)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast
  vocab = {"[UNK]": 0}
  for ch in sorted(set(alphabet)):
    vocab.setdefault(ch, len(vocab))
  tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
  tok.decoder = decoders.Fuse()
  return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def encode(tokenizer, texts, width: int | None = None):
  """(ids int32[B, N], lengths int32[B]); N = width or the longest."""
  encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
  n = width or max(1, max(len(e) for e in encoded))
  if max(len(e) for e in encoded) > n:
    raise ValueError(f"a text needs {max(len(e) for e in encoded)} tokens > width {n}")
  ids = np.zeros((len(texts), n), np.int32)
  for i, e in enumerate(encoded):
    ids[i, :len(e)] = e
  return ids, np.array([len(e) for e in encoded], np.int32)


# ------------------------------------------------------------------------------------------
# Completions.

JUNK = ("xyzzy", "Happy!", "la la", "", " ", "neutral", "[joy", "fear]", "sad\tface",
        "no  words", "'", '"', "\u00a0calm", "É", "x’y", "[", "]")


def random_label(rng, surfaces) -> str:
  if rng.random() < 0.7:
    s = surfaces[int(rng.integers(len(surfaces)))]
    styles = (s, s.upper(), s.capitalize(), " " + s, s + " ", "\t" + s, "  " + s + "\n")
    return styles[int(rng.integers(len(styles)))]
  return JUNK[int(rng.integers(len(JUNK)))]


def random_completion(rng, surfaces) -> str:
  """An R1-style completion with random labels, separators, brackets and broken tags."""
  labels = [random_label(rng, surfaces) for _ in range(int(rng.integers(0, 6)))]
  seps = (", ", ",", " ,", "','", '", "', ",,")
  answer = seps[int(rng.integers(len(seps)))].join(labels)
  r = rng.random()
  if r < 0.2:
    answer = "[" + answer + "]"
  elif r < 0.25:
    answer = " [" + answer + "] "
  words = list(surfaces) + ["the", "voice", "is", "Very", "calm.", "x-ray", "(sad)", "HAPPY,"]
  think = " ".join(words[int(rng.integers(len(words)))] for _ in range(int(rng.integers(0, 8))))
  text = f"<think>{think}</think><answer>{answer}</answer>"
  r = rng.random()
  if r < 0.05:
    text = text.replace("</think>", "")
  elif r < 0.1:
    text = text.replace("<answer>", "<answer><answer>")
  elif r < 0.15:
    text = text.replace("</answer>", "")
  elif r < 0.2:
    text = text + "</answer>"
  elif r < 0.25:
    text = "<answer>" + text
  elif r < 0.3:
    text = text.replace("<think>", "<think><").replace("</think>", "</think>\n")
  elif r < 0.33:
    text = text.replace("<answer>", "<answer>\u3000")
  if rng.random() < 0.1:
    text = " " + text + "\n"
  return text
