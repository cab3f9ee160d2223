"""LLM label / sentiment extraction: a tiny Hugging Face Qwen2 folder (and its launch.convert
checkpoint) answers the official prompts; the answers equal transformers' generate with the
same greedy settings and repetition penalty, prompt by prompt (no padding)."""
import json
import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import qwen2_testlib as lib  # noqa: E402
from affect_jax.checkpoints import hf_qwen2, params_io  # noqa: E402
from affect_jax.data import tokenizer as tokenizer_lib  # noqa: E402
from affect_jax.emotion import llm_extract  # noqa: E402
from configs import demo, unibench  # noqa: E402

NEW = 10
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("llm")
  cfg = demo.get_config().data.tokenizer      # its bos is the chat template's <|im_start|>
  texts = [unibench.LABEL_PROMPT.format(text=t) for t in ("happy and calm", "sad", "")] * 5
  tok = tokenizer_lib.build_from_config(texts, cfg)
  tok.chat_template = TEMPLATE
  hf = lib.hf_model(seed=4, vocab_size=len(tok), max_position_embeddings=1024)
  lib.save_hf(hf, root / "hf")
  tok.save_pretrained(root / "hf")
  return root, hf, tok


def _settings(**changes):
  return unibench.llm_config(greedy=True, max_new_tokens=NEW, batch_size=2,
                             buckets=(256, 512), **changes)


def _hf_answer(hf, tok, prompt, penalty):
  text = tok.apply_chat_template([{"role": "user", "content": prompt}],
                                 add_generation_prompt=True, tokenize=False)
  assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n")
  ids = tok(text, add_special_tokens=False)["input_ids"]
  eos = sorted({tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids(
      "<|endoftext|>")})
  with torch.no_grad():
    out = hf.generate(input_ids=torch.tensor([ids]), max_new_tokens=NEW, do_sample=False,
                      repetition_penalty=penalty, eos_token_id=eos, pad_token_id=eos[0])
  return tok.decode(out[0, len(ids):], skip_special_tokens=True)


def test_answers_equal_transformers_generate(folder):
  root, hf, tok = folder
  settings = _settings()
  llm = llm_extract.LlmExtractor.load(str(root / "hf"), settings)
  texts = ["<think>calm voice</think><answer>happy</answer>", "She looks sad.", "x"]
  prompts = [settings.label_prompt.format(text=t) for t in texts]
  expect = [_hf_answer(hf, tok, p, settings.repetition_penalty) for p in prompts]
  assert llm.answers(prompts) == expect         # 3 prompts: two batches, left padding
  assert llm.label_cells(texts) == [llm_extract.response_cell(a) for a in expect]
  # The launch.convert checkpoint of the same folder answers the same.
  config, params = hf_qwen2.load(root / "hf")
  params_io.save(root / "conv", {"llm": params}, {"components": {"llm": {
      "hf_config": config.to_hf(), "source": str(root / "hf")}}})
  converted = llm_extract.LlmExtractor.load(str(root / "conv"), settings)
  assert converted.answers(prompts[:2]) == expect[:2]
  cells = ["happy, calm", "sad"]
  sentiment = [_hf_answer(hf, tok, settings.sentiment_prompt.format(text=c), 1.05)
               for c in cells]
  assert list(llm.polarities(cells)) == [llm_extract.response_polarity(a, settings.sentiments)
                                         for a in sentiment]


def test_answer_reading():
  assert llm_extract.response_cell("Output: [Happy, 'sad']") == "happy, sad"
  assert llm_extract.response_cell("the list is [worried, tense] and more") == "worried, tense"
  assert llm_extract.response_cell("[]") == ""
  assert llm_extract.response_cell("[angry, sad") == "angry, sad"
  assert llm_extract.response_cell("calm,\nhappy") == "calm, happy"
  candidates = ("positive", "negative", "neutral")
  assert llm_extract.response_polarity("Negative, not positive", candidates) == -1
  assert llm_extract.response_polarity("it is POSITIVE", candidates) == 1
  assert llm_extract.response_polarity("unclear", candidates) == 0


def test_bad_extractor_folders(tmp_path):
  with pytest.raises(ValueError, match="neither a Hugging Face Qwen2 folder"):
    llm_extract.load_llm(str(tmp_path), _settings())
  (tmp_path / "c").mkdir()
  (tmp_path / "c" / "meta.json").write_text(json.dumps({"format": "affect_jax.params",
                                                        "components": {"vision": {}}}))
  (tmp_path / "c" / "params").mkdir()
  with pytest.raises(ValueError, match="no llm component"):
    llm_extract.load_llm(str(tmp_path / "c"), _settings())
