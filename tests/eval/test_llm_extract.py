"""LLM label / sentiment extraction: a tiny Hugging Face Qwen2 folder (and its launch.convert
checkpoint) answers the official prompts; the answers equal transformers' generate with the
same greedy settings and repetition penalty, prompt by prompt (no padding). The prompts equal
the official ones (re-typed below from AffectGPT toolkit/utils/qwen.py), the chat ids equal a
Qwen2.5-style chat template's, and the official answer reading follows evaluation.py."""
import json

import pytest
import torch
from tests.testlib import qwen2 as lib
from affect_jax.checkpoints import hf_qwen2, params_io  # noqa: E402
from affect_jax.data import tokenizer as tokenizer_lib  # noqa: E402
from affect_jax.eval import llm_extract  # noqa: E402
from configs import demo, unibench  # noqa: E402

NEW = 10
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("llm")
  cfg = demo.get_config().data.tokenizer      # its bos is the chat template's <|im_start|>
  texts = [unibench.LABEL_PROMPT.format(text=t) for t in ("happy and calm", "sad", "")] * 5
  texts += [unibench.SENTIMENT_PROMPT.format(text="[sad]"), "system user assistant You are "
            "Qwen, created by Alibaba Cloud. You are a helpful assistant. He smiles."] * 5
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


def test_extractor_on_a_mesh_equals_transformers_generate(folder):
  """On 8 fake devices, mesh (2, 4, 1): the weights lie on their shardings, each batch of 2
  prompts is compiled with 8 rows (6 filler rows, never answered), and the answers still equal
  transformers' generate prompt by prompt."""
  import jax
  from affect_jax import sharding
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (tests/conftest.py fakes them)")
  root, hf, tok = folder
  settings = _settings()
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
  llm = llm_extract.LlmExtractor.load(str(root / "hf"), settings, mesh, sharding.DEFAULT_RULES)
  assert llm.rows == 8
  embed = llm.params["embed_tokens"]["embedding"]
  assert embed.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")   # vocab, embed
  texts = ["<think>calm voice</think><answer>happy</answer>", "She looks sad.", "x"]
  prompts = [settings.label_prompt.format(text=t) for t in texts]
  expect = [_hf_answer(hf, tok, p, settings.repetition_penalty) for p in prompts]
  assert llm.answers(prompts) == expect


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


# AffectGPT toolkit/utils/qwen.py, re-typed as written there (f-strings whose backslash line
# continuations keep the next line's indentation; long lines kept as there); {reason} is the
# text put in.
def _official_openset_prompt(reason):
  prompt = f"""Please assume the role of an expert in the field of emotions. \
We provide clues that may be related to the emotions of the characters. Based on the provided clues, please identify the emotional states of the main character. \
The main character is the one with the most detailed clues. \
Please separate different emotional categories with commas and output only the clearly identifiable emotional categories in a list format. \
If none are identified, please output an empty list. \
Input: We cannot recognize his emotional state; Output: [] \
Input: His emotional state is happy, sad, and angry; Output: [happy, sad, angry] \
Input: {reason}; Output: """
  return prompt


def _official_sentiment_prompt(reason):
  prompt = f"""Please act as an expert in the field of emotions. \
            We provide a few words to describe the emotions of a character. \
            Please choose the most likely sentiment from the given candidates: [positive, negative, neutral] \
            Please direct output answer without analyzing process. \
            Input: [joyful]; Output: positive \
            Input: []; Output: neutral \
            Input: {reason}; Output: """
  return prompt


# Qwen2.5-Instruct's chat template without its tool branches: the default system message when
# the chat has none.
QWEN_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


def test_prompts_are_the_official_ones_word_for_word():
  for text in ("The man frowns and sighs.", "[happy, sad]", ""):
    assert unibench.LABEL_PROMPT.format(text=text) == _official_openset_prompt(text)
    assert unibench.SENTIMENT_PROMPT.format(text=text) == _official_sentiment_prompt(text)
  settings = unibench.llm_config()
  assert settings.label_prompt == _official_openset_prompt("{text}")
  assert settings.sentiment_prompt == _official_sentiment_prompt("{text}")
  assert "The main character is the one with the most detailed clues." in settings.label_prompt


def test_chat_ids_equal_the_chat_template(folder):
  root, _, tok = folder
  qwen_tok = tokenizer_lib.load_tokenizer(str(root / "hf"))
  qwen_tok.chat_template = QWEN_TEMPLATE
  config, params = hf_qwen2.load(root / "hf")
  prompt = unibench.LABEL_PROMPT.format(text="He smiles.")
  for system, head in (("", "You are Qwen, created by Alibaba Cloud. You are a helpful "
                        "assistant."), ("You are a helpful assistant.",) * 2):
    llm = llm_extract.LlmExtractor(config, params, qwen_tok, _settings(system_message=system))
    chat = [{"role": "user", "content": prompt}]
    if system:
      chat.insert(0, {"role": "system", "content": system})
    expect = qwen_tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
    expect = list(getattr(expect, "input_ids", expect))
    assert llm.prompt_ids(prompt) == expect
    assert qwen_tok.decode(expect) == (f"<|im_start|>system\n{head}<|im_end|>\n<|im_start|>user"
                                       f"\n{prompt}<|im_end|>\n<|im_start|>assistant\n")


def test_official_answer_reading():
  """evaluation.py: func_postprocess_qwen, then the label answer is kept whole and a sentiment
  answer counts only when it equals a candidate (anything else scores as neutral, 0)."""
  post = llm_extract.official_postprocess
  assert post("  Output: [happy,\nsad]\n") == "[happy,sad]"
  assert post("输出：[angry]") == "[angry]"
  assert post("Input: Output: [x]") == "Output: [x]"     # each word once, in the official order
  assert post("output:\n[]") == "[]"
  assert post("OUTPUT: [calm]") == "OUTPUT: [calm]"       # the official words are case-exact
  candidates = ("positive", "negative", "neutral")
  cases = {"positive": 1, " Output: negative\n": -1, "neutral": 0, "Positive.": 0,
           "Positive": 0, "positive.": 0, "positive, negative": 0, "it is positive": 0,
           "输出：positive": 1, "posi\ntive": 1}
  assert {a: llm_extract.official_polarity(a, candidates) for a in cases} == cases


def test_official_parsing_end_to_end(folder):
  root, hf, tok = folder
  settings = _settings(parsing="official")
  llm = llm_extract.LlmExtractor.load(str(root / "hf"), settings)
  texts = ["She looks sad.", "x"]
  answers = [_hf_answer(hf, tok, settings.label_prompt.format(text=t), 1.05) for t in texts]
  cells = llm.label_cells(texts)
  assert cells == [a.strip().replace("\n", "").strip() for a in answers]
  sentiment = [_hf_answer(hf, tok, settings.sentiment_prompt.format(text=c), 1.05)
               for c in cells]
  words = {"positive": 1, "negative": -1, "neutral": 0}
  assert list(llm.polarities(cells)) == [words.get(a.strip(), 0) for a in sentiment]
  with pytest.raises(ValueError, match="parsing='loose'"):
    llm_extract.LlmExtractor.load(str(root / "hf"), _settings(parsing="loose"))


def test_bad_extractor_folders(tmp_path):
  with pytest.raises(ValueError, match="neither a Hugging Face Qwen2 folder"):
    llm_extract.load_llm(str(tmp_path), _settings())
  (tmp_path / "c").mkdir()
  (tmp_path / "c" / "meta.json").write_text(json.dumps({"format": "affect_jax.params",
                                                        "components": {"vision": {}}}))
  (tmp_path / "c" / "params").mkdir()
  with pytest.raises(ValueError, match="no llm component"):
    llm_extract.load_llm(str(tmp_path / "c"), _settings())
