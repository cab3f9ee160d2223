"""The setup's config checks (affect_jax/experiment.py): data sources, tokenizer and model ids fail early and clearly."""
import pathlib

import pytest

from affect_jax.data import overlap
from affect_jax.data import tokenizer as tokenizer_lib
from affect_jax import experiment
from configs import demo


def _tok(tmp_path):
  cfg = demo.get_config().data.tokenizer
  texts = ["<think>calm and happy</think><answer>happy, calm</answer>"] * 20
  return tokenizer_lib.build_from_config(texts, cfg)


def test_non_demo_source_needs_a_folder(tmp_path):
  c = demo.get_config()
  c.data.sources.sft.dataset = "mercaptionplus"
  with pytest.raises(ValueError, match=r"sources\.sft\.data_dir"):
    experiment.build_datasets(c.data, pathlib.Path(tmp_path))


def test_non_demo_data_needs_the_decoder_tokenizer(tmp_path):
  c = demo.get_config()
  c.data.sources.grpo.dataset = "mer2025ov"
  with pytest.raises(ValueError, match="tokenizer_dir"):
    experiment.make_tokenizer(c, pathlib.Path(tmp_path))


def test_model_ids_must_agree_with_the_tokenizer(tmp_path):
  c = demo.get_config()
  tok = _tok(tmp_path)
  model = experiment.model_config(c, tok)
  assert model.llm.vocab_size == len(tok)
  assert dict(model.placeholder_ids)["audio"] == tok.convert_tokens_to_ids("<AudioHere>")
  c.model.placeholder_ids.audio = 77
  with pytest.raises(ValueError, match="placeholder_ids.audio=77"):
    experiment.model_config(c, tok)
  c = demo.get_config()
  c.model.llm.vocab_size = 10
  with pytest.raises(ValueError, match="vocab_size"):
    experiment.model_config(c, tok)


def test_a_training_source_of_only_eval_clips_names_both_sources():
  c = demo.get_config()
  c.data.sources.grpo.split = "test"
  c.data.sources.eval.data_dir = "/data/ovmerdplus"
  names = ["a", "b"]
  with pytest.raises(ValueError, match=r"config\.data\.sources\.grpo \(demo split 'test' in the "
                                       r"generated demo set\): all 2 clips.*"
                                       r"config\.data\.sources\.eval \(demo split 'test' in "
                                       r"/data/ovmerdplus\)"):
    overlap.drop_eval_clips(names, names, names, what=experiment.source_text(c.data, "grpo"),
                            eval_what=experiment.source_text(c.data, "eval"))
