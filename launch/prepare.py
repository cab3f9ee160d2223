r"""Builds an array_record dataset from an official emotion-dataset folder (or the demo).

  # the demo: generated under OUT/source first (configs/data.py `synthetic`), then built
  python -m launch.prepare --dataset=demo --out_dir=/data/affect
  # an official release folder (layouts: affect_jax/data/builders/mer.py)
  python -m launch.prepare --dataset=mercaptionplus --data_dir=/data/mer2025-dataset \
      --out_dir=/data/affect --media=paths --config.media.num_frames=8
  python -m launch.prepare --dataset=unibench:meld --data_dir=/data/meld-process --split=test \
      --out_dir=/data/affect --rows_out=/data/affect/meld_test_rows.csv

Prints one JSON object: dataset, path (the built folder; give it to training / evaluation),
media, reused, and per split rows_read, kept, skipped, skipped_by_reason and the first
--show_skipped skipped rows (file, row, name, reason, detail); all of them are in
PATH/report.json and in the log. --rows_out=F.csv also writes the kept rows, one per clip
(name, split, task, labels, valence, subtitle; affect_jax/data/builders/kept_rows.py), atomically.
Exit status 2 with "prepare: error: ..." when the folder has
nothing usable or is not in the layout --dataset names, or the config or a flag is wrong
(checked before anything is written: configs/validate.py); 1 with "prepare: error: <folder>: no
space left on device ..." when the disk fills (nothing half-written is kept).
"""
from __future__ import annotations

import json
import os

from absl import app, flags

from configs import data as data_config
from configs import validate
from launch import cli


_DATASETS = ("demo", "mercaptionplus", "ovmerd", "ovmerdplus", "mer2025ov", "unibench:NAME")
_DATASET = flags.DEFINE_string("dataset", "demo", f"Layout of --data_dir: one of {_DATASETS}.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "The dataset's folder (demo: default "
                                "OUT/source, generated on first use).")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where the built datasets go.")
_SPLIT = flags.DEFINE_list("split", [], "Splits to build (default: every split found).")
_MEDIA = flags.DEFINE_enum("media", None, ["raw", "paths"], "Store decoded media ('raw') or "
                           "only their paths (default: the config's builder.media).")
_VISUAL = flags.DEFINE_enum("visual", None, ["frames", "faces"], "Video frames or OpenFace "
                            "crops (default: the config's builder.visual_source).")
_WORKERS = flags.DEFINE_integer("workers", None, "Media-decoding processes (default: the "
                                "config's builder.num_workers).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Rebuild even if the same build exists.")
_ROWS_OUT = flags.DEFINE_string("rows_out", "", "Also write the kept rows to this CSV: name, "
                                "split, task, labels, valence, subtitle (one per clip).")
_SHOW = flags.DEFINE_integer("show_skipped", 20, "Skipped rows listed per split in the JSON.")


def define_flags():
  """The --config flag (defined only when run as a program: config_flags applies the
  --config.<path> overrides while defining it, and cli.run_main reports a bad one)."""
  cli.define_config_file("config", "configs/data.py",
                         "Data config (media, synthetic; builder when present).")


def prepare(dataset: str, data_dir: str, out_dir: str, cfg, splits=(), media: str | None = None,
            visual: str | None = None, workers: int | None = None, overwrite: bool = False,
            rows_out: str = "") -> dict:
  """Builds one dataset (launch doc); returns builders.build's report (with rows_out and
  rows_written when rows_out is given)."""
  from affect_jax.data import builders
  from affect_jax.data import synthetic
  from affect_jax.data.builders import kept_rows

  if rows_out:
    kept_rows.check_path(rows_out)
  bcfg = cfg.builder if "builder" in cfg else data_config.builder_config()
  bcfg = bcfg.copy_and_resolve_references()
  if media is not None:
    bcfg.media = media
  if visual is not None:
    bcfg.visual_source = visual
  if workers is not None:
    bcfg.num_workers = workers
  if dataset == "demo" and not data_dir:
    data_dir = synthetic.ensure_demo_data(os.path.join(out_dir, "source"), cfg.synthetic)
  if not data_dir:
    raise ValueError(f"--dataset={dataset} needs --data_dir (the dataset's folder).")
  report = builders.build(dataset, data_dir, out_dir, cfg, bcfg, splits, overwrite)
  if rows_out:
    try:
      written = kept_rows.write_csv(kept_rows.read_kept(report), rows_out)
    except OSError as e:
      raise ValueError(f"--rows_out={rows_out}: cannot write it ({e}); the build itself is in "
                       f"{report['path']}.") from e
    report = dict(report, rows_out=os.path.abspath(rows_out), rows_written=written)
  return report


def summary(report: dict, show: int) -> dict:
  """The report with at most `show` skipped rows per split."""
  out = dict(report)
  out["splits"] = {
      split: dict(info, skipped_rows=info["skipped_rows"][:max(show, 0)])
      for split, info in report["splits"].items()}
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _OUT_DIR.value:
    raise app.UsageError("--out_dir is required.")
  config = flags.FLAGS.config
  validate.check(config, root="data")
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  report = prepare(_DATASET.value, _DATA_DIR.value, _OUT_DIR.value, config,
                   tuple(_SPLIT.value), _MEDIA.value, _VISUAL.value, _WORKERS.value,
                   _OVERWRITE.value, _ROWS_OUT.value)
  print(json.dumps(summary(report, _SHOW.value), sort_keys=True))


def run():
  # User errors (ValueError, missing files) end as "prepare: error: ..." with exit status 2
  # (launch/cli.py).
  cli.run_main(main, "prepare", define_flags)


if __name__ == "__main__":
  run()
