"""Prompt / target layout against literal strings, loss masks and padding against numpy."""
import numpy as np
import pytest

from affect_jax.data import prompts
from affect_jax.data import tokenizer as tok_lib
from configs import data as data_config

SUBTITLE = "I feel so sad today."
LABELS = ["sad", "gloomy"]
REASON = "The blue ring moves slowly; the voice is low."
PROMPT = ("###Human: <Multi><MultiHere></Multi> <Audio><AudioHere></Audio> "
          "<Video><FrameHere></Video> The subtitle of this video: <Subtitle>I feel so sad "
          "today.</Subtitle> Please recognize all possible emotional states of the character. "
          "###Assistant: ")
TARGET = ("<think>The blue ring moves slowly; the voice is low.</think>"
          "<answer>sad, gloomy</answer>###")


@pytest.fixture(scope="module")
def cfg():
  return data_config.get_data_config()


@pytest.fixture(scope="module")
def specials(cfg):
  return dict(cfg.tokenizer.special_tokens)


@pytest.fixture(scope="module")
def tokenizer(cfg, specials):
  corpus = [prompts.example_text(SUBTITLE, LABELS, REASON, cfg.prompt, specials)] * 4
  return tok_lib.build_from_config(corpus, cfg.tokenizer)


def _copy(c, **changes):
  c = c.copy_and_resolve_references()
  for k, v in changes.items():
    c[k] = v
  return c


def test_prompt_and_target_text_literal(cfg, specials):
  assert prompts.prompt_text(SUBTITLE, cfg.prompt, specials) == PROMPT
  assert prompts.target_text(LABELS, REASON, cfg.prompt) == TARGET
  assert cfg.prompt.question == "Please recognize all possible emotional states of the character."
  answer_only = _copy(cfg.prompt, target_format="answer")
  assert prompts.target_text(LABELS, REASON, answer_only) == "<answer>sad, gloomy</answer>###"
  labels_only = _copy(cfg.prompt, target_format="labels")
  assert prompts.target_text(LABELS, REASON, labels_only) == "sad, gloomy###"


def test_modalities_select_blocks(cfg, specials):
  no_av = _copy(cfg.prompt, modalities=("multi", "subtitle"), tokens_per_block=2)
  assert prompts.prompt_text("Hi.", no_av, specials) == (
      "###Human: <Multi><MultiHere><MultiHere></Multi> The subtitle of this video: "
      "<Subtitle>Hi.</Subtitle> Please recognize all possible emotional states of the "
      "character. ###Assistant: ")
  no_text = _copy(cfg.prompt, modalities=("video",))
  assert prompts.prompt_text("ignored", no_text, specials) == (
      "###Human: <Video><FrameHere></Video> Please recognize all possible emotional states of "
      "the character. ###Assistant: ")
  with pytest.raises(ValueError, match="unknown \\['face'\\]"):
    prompts.prompt_text("x", _copy(cfg.prompt, modalities=("face",)), specials)
  with pytest.raises(ValueError, match="target_format='json'"):
    prompts.target_text(LABELS, REASON, _copy(cfg.prompt, target_format="json"))


def test_encode_example_decodes_to_the_texts(cfg, specials, tokenizer):
  prompt_ids, target_ids = prompts.encode_example(tokenizer, SUBTITLE, LABELS, REASON,
                                                  cfg.prompt, specials)
  assert tokenizer.decode(prompt_ids) == PROMPT
  assert target_ids[-1] == tokenizer.eos_token_id
  assert tokenizer.decode(target_ids) == TARGET + "<|im_end|>"
  placeholder = tok_lib.placeholder_ids(tokenizer, specials)
  for modality, i in placeholder.items():
    assert prompt_ids.count(i) == cfg.prompt.tokens_per_block, modality
  assert tokenizer.convert_tokens_to_ids("<think>") == target_ids[0]


def test_truncation_cuts_subtitle_and_reason(cfg, specials, tokenizer):
  small = _copy(cfg.prompt, max_prompt_tokens=60, max_target_tokens=20)
  long_subtitle = " ".join(["sad"] * 200)
  long_reason = " ".join(["slowly"] * 200)
  prompt_ids, target_ids = prompts.encode_example(tokenizer, long_subtitle, LABELS, long_reason,
                                                  small, specials)
  assert len(prompt_ids) == 60 and len(target_ids) == 20
  text = tokenizer.decode(prompt_ids)
  assert text.startswith(PROMPT.split("I feel")[0]) and text.endswith(PROMPT.split("today.")[1])
  target = tokenizer.decode(target_ids)
  assert target.startswith("<think>slowly") and target.endswith(
      "</think><answer>sad, gloomy</answer>###<|im_end|>")
  with pytest.raises(ValueError, match="max_prompt_tokens=10"):
    prompts.encode_prompt(tokenizer, SUBTITLE, _copy(cfg.prompt, max_prompt_tokens=10), specials)


def test_sft_sequence_and_batch(cfg):
  pairs = [([5, 6, 7], [8, 9]), ([1] * 40, [2, 3, 4]), ([9], [9])]
  tokens, mask = prompts.sft_sequence(*pairs[0])
  np.testing.assert_array_equal(tokens, [5, 6, 7, 8, 9])
  np.testing.assert_array_equal(mask, [0, 0, 0, 1, 1])
  batch = prompts.sft_batch(pairs, cfg.prompt, pad_id=0)
  length = min(b for b in cfg.prompt.sequence_buckets if b >= 43)
  assert batch["tokens"].shape == (3, length) and batch["tokens"].dtype == np.int32
  for b, (p, t) in enumerate(pairs):
    n = len(p) + len(t)
    expected = np.concatenate([np.zeros(length - n, np.int32), p, t])
    np.testing.assert_array_equal(batch["tokens"][b], expected)
    np.testing.assert_array_equal(batch["attention_mask"][b], np.arange(length) >= length - n)
    np.testing.assert_array_equal(batch["loss_mask"][b], np.arange(length) >= length - len(t))


def test_prompt_batch_and_buckets(cfg):
  tokens, mask = prompts.prompt_batch([[3, 4], [5, 6, 7, 8]], cfg.prompt, pad_id=0)
  p = min(cfg.prompt.prompt_buckets)
  assert tokens.shape == (2, p)
  np.testing.assert_array_equal(tokens[0, -2:], [3, 4])
  np.testing.assert_array_equal(tokens[0, :-2], 0)
  np.testing.assert_array_equal(mask.sum(1), [2, 4])
  assert prompts.bucket_length(33, (64, 32, 48)) == 48
  with pytest.raises(ValueError, match="exceeds the largest bucket 64"):
    prompts.bucket_length(65, (32, 64))
  with pytest.raises(ValueError, match="sequence 0 has 3 tokens > length 2"):
    prompts.pad_left([[1, 2, 3]], 2, 0)
