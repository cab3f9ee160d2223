"""Prompt / target layout against the official template re-typed from base_dataset.py
(get_prompt_for_multimodal), token ids against the official construction re-derived
(to_token_ids, __getitem__'s length rule, collater's <bos> / <eos> / labels) on tokenizers
built offline, loss masks and padding against numpy."""
import numpy as np
import pytest

from affect_jax.data import prompts
from affect_jax.data import tokenizer as tok_lib
from configs import affectgpt_r1_7b
from configs import data as data_config

SUBTITLE = "I feel so sad today."
LABELS = ["sad", "gloomy"]
REASON = "The blue ring moves slowly; the voice is low."
QUESTION = "Please recognize all possible emotional states of the character."
IGNORE_INDEX = -100   # the official config.IGNORE_INDEX


def official_prompt(face_or_frame: str, subtitle: str, user_message: str) -> str:
  """base_dataset.py get_prompt_for_multimodal, the two settings, re-typed."""
  if face_or_frame == "multiface_audio_face_text":
    return ("###Human: The audio and video merged info is: <Multi><MultiHere></Multi>. "
            "The audio content is as follows: <Audio><AudioHere></Audio>. "
            "Meanwhile, we uniformly sample raw frames from the video and extract faces from "
            "these frames: <Video><FaceHere></Video>. "
            f"The subtitle of this video is: <Subtitle>{subtitle}</Subtitle>. "
            "Now, please answer my question based on all the provided information. "
            f"{user_message} ###Assistant: ")
  assert face_or_frame == "multiframe_audio_frame_text"
  return ("###Human: The audio and video merged info is: <Multi><MultiHere></Multi>. "
          "The audio content is as follows: <Audio><AudioHere></Audio>. "
          "Meanwhile, we uniformly sample raw frames from the video: <Video><FrameHere></Video>. "
          f"The subtitle of this video is: <Subtitle>{subtitle}</Subtitle>. "
          "Now, please answer my question based on all the provided information. "
          f"{user_message} ###Assistant: ")


PROMPT = official_prompt("multiframe_audio_frame_text", SUBTITLE, QUESTION)
TARGET = ("<think>The blue ring moves slowly; the voice is low.</think>"
          "<answer>sad, gloomy</answer>###")


def official_sequence(tok, prompt: str, target: str, max_length: int):
  """(input_ids, labels) of one sample as base_dataset.py builds them, or None when
  __getitem__ rejects it ("too long text_input"); tok carries bos / eos as
  load_tokenizer_from_LLM sets them."""
  def to_token_ids(text):
    return tok(text, max_length=max_length, truncation=True,
               add_special_tokens=False)["input_ids"]
  prompt_id, target_id = to_token_ids(prompt), to_token_ids(target)
  if len(prompt_id) + len(target_id) > max_length:
    return None
  input_ids = [tok.bos_token_id] + prompt_id + target_id + [tok.eos_token_id]
  labels = [IGNORE_INDEX] + [IGNORE_INDEX] * len(prompt_id) + target_id + [tok.eos_token_id]
  return input_ids, labels


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


@pytest.fixture(scope="module")
def r1_7b():
  return affectgpt_r1_7b.get_config().data


@pytest.fixture(scope="module")
def qwen_like(r1_7b):
  """A Qwen2.5-Instruct-like tokenizer trained offline (its specials <|endoftext|>,
  <|im_start|>, <|im_end|>; eos <|im_end|>, no bos), then set up as the official
  load_tokenizer_from_LLM('Qwen25') does: bos <|im_start|>, pad = eos, the five patch tokens
  added as special tokens."""
  from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers, decoders
  from transformers import PreTrainedTokenizerFast
  corpus = [official_prompt("multiface_audio_face_text", SUBTITLE, QUESTION) + TARGET] * 4 + [
      " slowly" * 20]
  raw = Tokenizer(models.BPE())
  raw.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(data_config.QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  raw.decoder = decoders.ByteLevel()
  raw.train_from_iterator(corpus, trainers.BpeTrainer(
      vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>",
                                pad_token="<|endoftext|>")
  assert tok.bos_token is None
  tok.bos_token = "<|im_start|>"
  tok.pad_token = tok.eos_token
  for t in ("<ImageHere>", "<AudioHere>", "<FrameHere>", "<FaceHere>", "<MultiHere>"):
    tok.add_tokens([t], special_tokens=True)
  return tok


def _copy(c, **changes):
  c = c.copy_and_resolve_references()
  for k, v in changes.items():
    c[k] = v
  return c


def test_prompt_is_the_official_template_word_for_word(cfg, specials, r1_7b):
  # The default (demo) config: the frames variant; the 7B config: the faces variant.
  assert cfg.prompt.video_prompt == "frames"
  assert prompts.prompt_text(SUBTITLE, cfg.prompt, specials) == official_prompt(
      "multiframe_audio_frame_text", SUBTITLE, QUESTION)
  assert r1_7b.prompt.video_prompt == "faces" and r1_7b.builder.visual_source == "faces"
  assert prompts.prompt_text(SUBTITLE, r1_7b.prompt, dict(r1_7b.tokenizer.special_tokens)) == \
      official_prompt("multiface_audio_face_text", SUBTITLE, QUESTION)
  # The switch alone selects the sentence (the placeholder is the tokenizer's video token).
  faces = _copy(cfg.prompt, video_prompt="faces")
  assert prompts.prompt_text("Hi.", faces, dict(specials, video="<FaceHere>")) == \
      official_prompt("multiface_audio_face_text", "Hi.", QUESTION)
  with pytest.raises(ValueError, match="video_prompt='face'"):
    prompts.prompt_text("Hi.", _copy(cfg.prompt, video_prompt="face"), specials)


def test_target_text_literal(cfg):
  assert prompts.target_text(LABELS, REASON, cfg.prompt) == TARGET
  answer_only = _copy(cfg.prompt, target_format="answer")
  assert prompts.target_text(LABELS, REASON, answer_only) == "<answer>sad, gloomy</answer>###"
  labels_only = _copy(cfg.prompt, target_format="labels")
  assert prompts.target_text(LABELS, REASON, labels_only) == "sad, gloomy###"


def test_modalities_select_blocks(cfg, specials):
  no_av = _copy(cfg.prompt, modalities=("multi", "subtitle"), tokens_per_block=2)
  assert prompts.prompt_text("Hi.", no_av, specials) == (
      "###Human: The audio and video merged info is: <Multi><MultiHere><MultiHere></Multi>. "
      "The subtitle of this video is: <Subtitle>Hi.</Subtitle>. Now, please answer my question "
      "based on all the provided information. " + QUESTION + " ###Assistant: ")
  no_text = _copy(cfg.prompt, modalities=("video",))
  assert prompts.prompt_text("ignored", no_text, specials) == (
      "###Human: Meanwhile, we uniformly sample raw frames from the video: "
      "<Video><FrameHere></Video>. Now, please answer my question based on all the provided "
      "information. " + QUESTION + " ###Assistant: ")
  with pytest.raises(ValueError, match="unknown \\['face'\\]"):
    prompts.prompt_text("x", _copy(cfg.prompt, modalities=("face",)), specials)
  with pytest.raises(ValueError, match="target_format='json'"):
    prompts.target_text(LABELS, REASON, _copy(cfg.prompt, target_format="json"))


def test_demo_tokenizer_sequence_is_the_official_construction(cfg, specials, tokenizer):
  prompt_ids, target_ids = prompts.encode_example(tokenizer, SUBTITLE, LABELS, REASON,
                                                  cfg.prompt, specials)
  input_ids, labels = official_sequence(tokenizer, PROMPT, TARGET, cfg.prompt.max_length)
  assert tokenizer.bos_token == "<|im_start|>" and input_ids[0] == tokenizer.bos_token_id
  assert input_ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
  batch = prompts.sft_batch([(prompt_ids, target_ids)], cfg.prompt, pad_id=0)
  n = len(input_ids)
  np.testing.assert_array_equal(batch["tokens"][0, -n:], input_ids)
  np.testing.assert_array_equal(batch["loss_mask"][0, -n:], np.asarray(labels) != IGNORE_INDEX)
  assert tokenizer.decode(prompt_ids) == "<|im_start|>" + PROMPT
  assert tokenizer.decode(target_ids) == TARGET + "<|im_end|>"
  placeholder = tok_lib.placeholder_ids(tokenizer, specials)
  for modality, i in placeholder.items():
    assert prompt_ids.count(i) == cfg.prompt.tokens_per_block, modality
  # Rollout / evaluation prompts: <bos> + prompt, or the prompt alone (official inference).
  gen = prompts.encode_prompt(tokenizer, SUBTITLE, cfg.prompt, specials)
  assert gen == input_ids[:1 + len(tokenizer(PROMPT, add_special_tokens=False)["input_ids"])]
  no_bos = prompts.encode_prompt(tokenizer, SUBTITLE, _copy(cfg.prompt, generation_bos=False),
                                 specials)
  assert no_bos == tokenizer(PROMPT, add_special_tokens=False)["input_ids"]


def test_qwen_sequence_is_the_official_construction(r1_7b, qwen_like):
  specials = dict(r1_7b.tokenizer.special_tokens)
  prompt = official_prompt("multiface_audio_face_text", SUBTITLE, QUESTION)
  pieces = prompts.encode_example(qwen_like, SUBTITLE, LABELS, REASON, r1_7b.prompt, specials)
  # The 7B config's target has no end marker (R1 format): the official rule on that text.
  target = prompts.target_text(LABELS, REASON, r1_7b.prompt)
  input_ids, labels = official_sequence(qwen_like, prompt, target, 1024)
  assert input_ids[0] == qwen_like.convert_tokens_to_ids("<|im_start|>")
  assert input_ids[-1] == qwen_like.convert_tokens_to_ids("<|im_end|>")
  tokens, mask = prompts.sft_sequence(*pieces)
  np.testing.assert_array_equal(tokens, input_ids)
  np.testing.assert_array_equal(mask, np.asarray(labels) != IGNORE_INDEX)


def test_7b_lengths_cut_skip_and_fit_the_buckets(r1_7b, qwen_like):
  """max_length 1,024 for prompt and target, as the official loader: each cut at 1,024, a
  sample over 1,024 in all skipped (None), never an exception; the buckets hold the rest."""
  cfg, specials = r1_7b.prompt, dict(r1_7b.tokenizer.special_tokens)
  assert cfg.max_length == 1024
  word = "slowly"
  assert len(qwen_like(" " + word, add_special_tokens=False)["input_ids"]) == 1
  base = official_prompt("multiface_audio_face_text", SUBTITLE, QUESTION)
  n_prompt = len(qwen_like(base, add_special_tokens=False)["input_ids"])

  def target_len(reason):
    return len(qwen_like(prompts.target_text(LABELS, reason, cfg),
                         add_special_tokens=False)["input_ids"])

  def reason_for(target_tokens):     # a reason giving a target of exactly target_tokens
    short = word + (" " + word) * 9   # each further " slowly" is one more token
    return short + (" " + word) * (target_tokens - target_len(short))

  # Exactly 1,024 in all: kept; the sequence is 1,026 tokens and fits a sequence bucket.
  reason = reason_for(1024 - n_prompt)
  target = prompts.target_text(LABELS, reason, cfg)
  pieces = prompts.encode_example(qwen_like, SUBTITLE, LABELS, reason, cfg, specials)
  input_ids, labels = official_sequence(qwen_like, base, target, 1024)
  assert len(input_ids) == 1026
  batch = prompts.sft_batch([pieces], cfg, pad_id=qwen_like.pad_token_id)
  assert batch["tokens"].shape[1] == 1026
  np.testing.assert_array_equal(batch["tokens"][0], input_ids)
  np.testing.assert_array_equal(batch["loss_mask"][0], np.asarray(labels) != IGNORE_INDEX)
  # One more target token: skipped, as official_sequence rejects it.
  longer = reason + " " + word
  assert official_sequence(qwen_like, base, prompts.target_text(LABELS, longer, cfg),
                           1024) is None
  assert prompts.encode_example(qwen_like, SUBTITLE, LABELS, longer, cfg, specials) is None
  # A 2,000-token target and a 2,000-token subtitle: each cut at its first 1,024 tokens.
  very_long = word + (" " + word) * 1999
  full = qwen_like(prompts.target_text(LABELS, very_long, cfg),
                   add_special_tokens=False)["input_ids"]
  assert prompts.target_ids(qwen_like, LABELS, very_long, cfg) == full[:1024]
  assert prompts.encode_example(qwen_like, SUBTITLE, LABELS, very_long, cfg, specials) is None
  long_prompt = official_prompt("multiface_audio_face_text", very_long, QUESTION)
  full = qwen_like(long_prompt, add_special_tokens=False)["input_ids"]
  assert prompts.prompt_ids(qwen_like, very_long, cfg, specials) == full[:1024]
  # The longest rollout prompt (<bos> + 1,024) fits a prompt bucket.
  gen = prompts.encode_prompt(qwen_like, very_long, cfg, specials)
  assert gen == [qwen_like.bos_token_id] + full[:1024]
  tokens, mask = prompts.prompt_batch([gen], cfg, pad_id=qwen_like.pad_token_id)
  assert tokens.shape == (1, 1025) and mask.all()
  assert max(cfg.prompt_buckets) >= cfg.max_length + 1
  assert max(cfg.sequence_buckets) >= cfg.max_length + 2


def test_demo_buckets_cover_the_max_length(cfg):
  assert max(cfg.prompt.prompt_buckets) >= cfg.prompt.max_length + 1
  assert max(cfg.prompt.sequence_buckets) >= cfg.prompt.max_length + 2


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
