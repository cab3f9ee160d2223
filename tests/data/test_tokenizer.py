"""The demo tokenizer: ids of special tokens, round trips, Qwen2 pre-tokenization, caching.

References: the `regex` package applying Qwen2's split pattern, the GPT-2 byte alphabet written
out here, literal strings and ids from the config's documented order.
"""
import json
import os

import pytest
import regex
from transformers import AutoTokenizer

from affect_jax.data import tokenizer as tok_lib
from configs import data as data_config

CORPUS = [
    "###Human: <Multi><MultiHere></Multi> <Audio><AudioHere></Audio> <Video><FrameHere></Video> "
    "Please recognize all possible emotional states of the character. ###Assistant: "
    "<think>The red circle moves slowly; the voice is low.</think><answer>sad, gloomy</answer>###",
    "I feel so happy about all of this.", "Honestly, this makes me furious.",
    "<think>The blue ring moves quickly.</think><answer>worried, anxious, let down</answer>###",
] * 4
WORDS = ["happy", "sad", "gloomy", "worried", "let down", "self-conscious", "Terrified",
         "surprise", "jealous"]


@pytest.fixture(scope="module")
def cfg():
  return data_config.get_data_config().tokenizer


@pytest.fixture(scope="module")
def tokenizer(cfg):
  return tok_lib.build_from_config(CORPUS, cfg)


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's byte -> printable character table, written out from its definition."""
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
               + list(range(ord("®"), ord("ÿ") + 1)))
  table, extra = {}, 0
  for b in range(256):
    if b in printable:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  return table


def test_special_and_added_ids_are_stable(cfg, tokenizer):
  ids = tok_lib.special_token_ids(tokenizer, cfg.special_tokens)
  assert ids == {"pad": 0, "eos": 1, "multi": 2, "audio": 3, "video": 4, "bos": 5}
  assert tokenizer.pad_token_id == 0 and tokenizer.eos_token_id == 1
  assert tokenizer.bos_token == "<|im_start|>" and tokenizer.bos_token_id == 5
  assert tok_lib.placeholder_ids(tokenizer, cfg.special_tokens) == {
      "multi": 2, "audio": 3, "video": 4}
  for k, tag in enumerate(cfg.added_tokens):
    assert tokenizer.convert_tokens_to_ids(tag) == 6 + k
  # A different corpus and vocabulary size keep the same fixed ids.
  other = tok_lib.build_tokenizer(["completely different text"] * 3, 300,
                                  dict(cfg.special_tokens), tuple(cfg.added_tokens),
                                  pretokenize_regex=cfg.pretokenize_regex)
  assert tok_lib.special_token_ids(other, cfg.special_tokens) == ids
  assert [other.convert_tokens_to_ids(t) for t in cfg.added_tokens] == [6, 7, 8, 9]


def test_vocab_size_bound_and_determinism(cfg, tokenizer):
  assert len(tokenizer) <= cfg.vocab_size
  again = tok_lib.build_from_config(CORPUS, cfg)
  assert again.get_vocab() == tokenizer.get_vocab()
  small = tok_lib.build_tokenizer(CORPUS, 280, dict(cfg.special_tokens), (),
                                  pretokenize_regex=cfg.pretokenize_regex)
  assert len(small) == 280


def test_tags_and_placeholders_are_single_tokens(cfg, tokenizer):
  text = "<MultiHere><think>calm</think><answer>sad, gloomy</answer>###<|im_end|>"
  ids = tokenizer(text, add_special_tokens=False)["input_ids"]
  assert ids[0] == 2 and ids[1] == 6 and ids[-1] == 1
  assert 6 in ids and 7 in ids and 8 in ids
  assert tokenizer.decode(ids) == text
  # Placeholders, pad and eos are special (dropped); the tags are normal tokens (kept).
  assert tokenizer.decode(ids, skip_special_tokens=True) == (
      "<think>calm</think><answer>sad, gloomy</answer>###")


@pytest.mark.parametrize("text", WORDS + [
    "<think>a tear… she SHAKES\t\n</think>\n<answer>[Worried, 'let down']</answer>",
    "情绪 😊 naïve café", "  leading and trailing spaces  ", "x" * 300])
def test_round_trip_any_text(tokenizer, text):
  ids = tokenizer(text, add_special_tokens=False)["input_ids"]
  assert tokenizer.decode(ids, skip_special_tokens=True) == text
  assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids


def test_pre_tokenization_is_qwen2s_regex_then_bytes(cfg, tokenizer):
  text = "I'M so   happy!! 123 times\n\nwe're   done?"
  pieces = tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)
  table = _bytes_to_unicode()
  expected = ["".join(table[b] for b in m.encode("utf-8"))
              for m in regex.findall(cfg.pretokenize_regex, text)]
  assert [p for p, _ in pieces] == expected


def test_ensure_demo_tokenizer_caches(tmp_path, cfg, tokenizer):
  first = tok_lib.ensure_demo_tokenizer(str(tmp_path), CORPUS, cfg)
  folders = [d for d in os.listdir(tmp_path) if d.startswith("tokenizer_")]
  assert len(folders) == 1 and not [d for d in os.listdir(tmp_path) if d.startswith(".tmp")]
  stamp = os.path.getmtime(tmp_path / folders[0] / "tokenizer.json")
  second = tok_lib.ensure_demo_tokenizer(str(tmp_path), CORPUS, cfg)
  assert os.path.getmtime(tmp_path / folders[0] / "tokenizer.json") == stamp
  assert second.get_vocab() == first.get_vocab() == tokenizer.get_vocab()
  assert second.pad_token_id == 0 and second.eos_token_id == 1
  assert second.padding_side == "left"
  # Any transformers loader reads the folder and tokenizes alike.
  auto = AutoTokenizer.from_pretrained(str(tmp_path / folders[0]))
  text = "<AudioHere> I feel so happy <answer>happy</answer>"
  assert auto(text)["input_ids"] == first(text)["input_ids"]
  with open(tmp_path / folders[0] / "tokenizer.json") as f:
    added = {t["content"]: t["special"] for t in json.load(f)["added_tokens"]}
  assert added["<think>"] is False and added["<MultiHere>"] is True
  # New texts: a new folder.
  tok_lib.ensure_demo_tokenizer(str(tmp_path), CORPUS + ["more text"], cfg)
  assert len([d for d in os.listdir(tmp_path) if d.startswith("tokenizer_")]) == 2


def test_errors(cfg):
  with pytest.raises(ValueError, match="missing roles \\['eos'\\]"):
    tok_lib.build_tokenizer(CORPUS, 512, {"pad": "<pad>"}, pretokenize_regex=".")
  with pytest.raises(ValueError, match="vocab_size=100"):
    tok_lib.build_tokenizer(CORPUS, 100, dict(cfg.special_tokens), (),
                            pretokenize_regex=cfg.pretokenize_regex)
  with pytest.raises(ValueError, match="distinct"):
    tok_lib.build_tokenizer(CORPUS, 512, {"pad": "<x>", "eos": "<x>"},
                            pretokenize_regex=cfg.pretokenize_regex)
  plain = tok_lib.build_tokenizer(CORPUS, 300, {"pad": "<p>", "eos": "<e>"},
                                  pretokenize_regex=cfg.pretokenize_regex)
  with pytest.raises(ValueError, match="no \\['multi', 'audio', 'video'\\] placeholder"):
    tok_lib.placeholder_ids(plain, {"pad": "<p>", "eos": "<e>"})
  with pytest.raises(ValueError, match="<FrameHere>"):
    tok_lib.token_id(plain, "<FrameHere>")
