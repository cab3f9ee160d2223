"""A data config at toy media sizes (2 frames of 16 x 16, 2 audio windows of 0.25 s), for tests
that build small datasets."""
from configs import data as data_config


def small_data_config(**synthetic_splits):
  """configs/data.py with toy media; synthetic_splits (train=, rl=, test=) set the demo's sizes."""
  c = data_config.get_data_config()
  c.media.num_frames = 2
  c.media.image_size = 16
  c.media.num_windows = 2
  c.media.window_seconds = 0.25
  if synthetic_splits:
    c.synthetic.splits = dict(synthetic_splits)
  return c
