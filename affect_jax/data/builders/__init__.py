"""Dataset builders: official emotion-dataset folders -> TFDS array_record datasets.

  report = build(dataset, data_dir, out_dir, cfg)       # writes (or reuses) the records
  source, meta = load_source(report["path"], "train")  # random access for the grain pipeline
See mer.py for the layouts and the stored example, records.py for row validation.
"""
from affect_jax.data.builders.mer import DATASETS, build, layout_for, load_source, make_builder
from affect_jax.data.builders.records import REASONS, MediaSettings, Skip

__all__ = ["DATASETS", "REASONS", "MediaSettings", "Skip", "build", "layout_for",
           "load_source", "make_builder"]
