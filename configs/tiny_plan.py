"""The tiny model (configs/tiny.py) with the demo's training sections at toy lengths: a config
whose vocabulary and placeholder ids are fixed, for `launch.benchmark --bench=plan` tests and
quick plan checks on one CPU (8 fake devices)."""
from configs import demo
from configs import tiny


def get_config():
  c = demo.get_config()
  t = tiny.get_config()
  c.model = t.model
  c.grpo.prompts_per_step = 8
  c.grpo_loss.num_generations = 2
  c.sampling.max_new_tokens = 8
  c.sampling.buckets = (16,)
  c.data.prompt.prompt_buckets = (16,)
  c.data.prompt.sequence_buckets = (32,)
  c.data.media.num_frames = 2
  c.data.media.num_windows = 2
  c.sft.batch_size = 8
  c.sft.logprob_chunk = 16
  return c
