"""Run logs: metrics.jsonl, TensorBoard event files, a progress bar and a PNG plot of the curves.

  log = RunLog(workdir, total_steps, phase="grpo", show=("reward", "loss"))
  log.write(step, {"reward": 0.4, ...}, tokens=4096)   # JSONL + TensorBoard + progress bar
  log.write_samples(step, rows)                        # samples.jsonl + a TensorBoard table
  log.close()
  plot_curves(workdir / "metrics.jsonl", workdir / "curves.png")

A metric is a scalar (a TensorBoard scalar <phase>/<name>) or a 1-D integer array of counts,
bin i counting the value i (a TensorBoard histogram <phase>/<name>, and the list of counts in
metrics.jsonl); mappings (the GRPO step's sampled completions) are left to write_samples.
Only process 0 writes (the other processes of a multi-host run get a silent RunLog). Values are
pulled to the host once per logged step (never inside the jitted step).
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import time
from typing import Iterable, Mapping

import jax
import numpy as np


def _scalar(v) -> float | None:
  try:
    x = float(np.asarray(jax.device_get(v)))
  except (TypeError, ValueError):
    return None
  return x if math.isfinite(x) else None


def is_counts(v) -> bool:
  """A 1-D integer array: a histogram of counts (module doc)."""
  if isinstance(v, Mapping):
    return False
  a = v if hasattr(v, "dtype") else np.asarray(v)      # a device array stays on the device
  return a.ndim == 1 and np.issubdtype(a.dtype, np.integer)


def scalars(metrics: Mapping) -> dict:
  """The scalar entries of a metrics dict (no histograms, no sampled completions)."""
  return {k: v for k, v in metrics.items() if not isinstance(v, Mapping) and np.ndim(v) == 0}


def histogram_args(counts) -> dict | None:
  """TensorBoard add_histogram_raw arguments for counts[i] of the integer value i (buckets
  (i - 0.5, i + 0.5]); None when nothing was counted."""
  c = np.asarray(counts, np.int64)
  if c.sum() == 0:
    return None
  values = np.arange(len(c))
  seen = values[c > 0]
  return dict(min=float(seen.min()), max=float(seen.max()), num=int(c.sum()),
              sum=float((values * c).sum()), sum_squares=float((values ** 2 * c).sum()),
              bucket_limits=[float(v) + 0.5 for v in values], bucket_counts=c.tolist())


def samples_markdown(rows: list[dict]) -> str:
  """A markdown table of sampled completions: name, completion, each reward term, reward,
  advantage (the keys of write_samples' rows)."""
  terms = list(rows[0]["terms"]) if rows else []
  cell = lambda x: (f"{x:.4g}" if isinstance(x, float) else str(x)).replace(
      "|", "\\|").replace("\n", " ")
  head = ["name", "completion", *terms, "reward", "advantage"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    values = [r["name"], r["completion"], *[r["terms"][t] for t in terms], r["reward"],
              r["advantage"]]
    lines.append("| " + " | ".join(cell(v) for v in values) + " |")
  return "\n".join(lines)


class RunLog:
  """Writes every logged step to metrics.jsonl and TensorBoard, and updates a tqdm bar."""

  def __init__(self, workdir: str | os.PathLike, total_steps: int, phase: str,
               show: Iterable[str] = ("loss",), start_step: int = 0, enabled: bool | None = None):
    self.workdir = pathlib.Path(workdir)
    self.phase = phase
    self.show = tuple(show)
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._t0 = time.perf_counter()
    self._last = (start_step, self._t0)
    self._tokens = 0.0
    self._writer = self._bar = self._jsonl = None
    if not self.enabled:
      return
    self.workdir.mkdir(parents=True, exist_ok=True)
    self._jsonl = open(self.workdir / "metrics.jsonl", "a", encoding="utf-8")
    from tensorboardX import SummaryWriter
    self._writer = SummaryWriter(str(self.workdir / "tensorboard" / phase))
    from tqdm import tqdm
    self._bar = tqdm(total=total_steps, initial=start_step, desc=phase, dynamic_ncols=True,
                     mininterval=1.0)

  def write(self, step: int, metrics: Mapping, tokens: float | None = None, **extra) -> dict:
    """Logs one step; returns the host-side record written."""
    record = {"phase": self.phase, "step": int(step)}
    histograms = {}
    for k, v in metrics.items():
      if isinstance(v, Mapping):
        continue
      if is_counts(v):
        histograms[k] = record[k] = np.asarray(jax.device_get(v)).tolist()
        continue
      x = _scalar(v)
      if x is not None:
        record[k] = x
    now = time.perf_counter()
    last_step, last_t = self._last
    if tokens is not None and step > last_step:
      record["tokens_per_s"] = tokens * (step - last_step) / max(now - last_t, 1e-9)
    record["elapsed_s"] = now - self._t0
    record.update(extra)
    self._last = (step, now)
    if not self.enabled:
      return record
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for k, v in record.items():
      if isinstance(v, (int, float)) and k not in ("step",):
        self._writer.add_scalar(f"{self.phase}/{k}", v, step)
    for k, counts in histograms.items():
      args = histogram_args(counts)
      if args is not None:
        self._writer.add_histogram_raw(f"{self.phase}/{k}", global_step=step, **args)
    shown = {k: f"{record[k]:.4g}" for k in self.show if k in record}
    if "tokens_per_s" in record:
      shown["tok/s"] = f"{record['tokens_per_s']:.0f}"
    self._bar.set_postfix(shown, refresh=False)
    self._bar.update(max(step - self._bar.n, 0))
    return record

  def write_samples(self, step: int, rows: list[dict]) -> None:
    """Sampled completions (dicts with name, completion, terms {name: value}, reward,
    advantage, ...): one JSON line each in samples.jsonl (with phase and step) and a
    markdown table as TensorBoard text <phase>/samples."""
    if not self.enabled or not rows:
      return
    with open(self.workdir / "samples.jsonl", "a", encoding="utf-8") as f:
      for r in rows:
        f.write(json.dumps({"phase": self.phase, "step": int(step), **r}) + "\n")
    self._writer.add_text(f"{self.phase}/samples", samples_markdown(rows), step)

  def close(self) -> None:
    if self.enabled:
      self._bar.close()
      self._writer.close()
      self._jsonl.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
  path = pathlib.Path(path)
  if not path.is_file():
    return []
  rows = []
  for line in path.read_text(encoding="utf-8").splitlines():
    line = line.strip()
    if line:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue      # a line cut by a crash
  return rows


PANELS = (("sft", "loss"), ("grpo", "reward"), ("eval", "ew_f"))


def plot_curves(metrics: str | os.PathLike | Mapping[str, str | os.PathLike],
                out_png: str | os.PathLike,
                panels: Iterable[tuple[str, str]] = PANELS) -> pathlib.Path | None:
  """One panel per (phase, metric) found; returns the PNG path (None if nothing was found).

  metrics: one run's metrics.jsonl (its curve, plus a moving average over a tenth of the points
  for curves longer than 10), or {label: metrics.jsonl} of several runs (one line each, the
  moving average for long curves, with a legend; e.g. the seeds of affect_jax/train/seeds.py).
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  runs = dict(metrics) if isinstance(metrics, Mapping) else {None: metrics}
  rows = {label: read_metrics(path) for label, path in runs.items()}
  series = []
  for phase, key in panels:
    lines = {}
    for label, rs in rows.items():
      pts = sorted((r["step"], r[key]) for r in rs if r.get("phase") == phase and key in r)
      if pts:
        lines[label] = pts
    if lines:
      series.append((phase, key, lines))
  if not series:
    return None
  fig, axes = plt.subplots(1, len(series), figsize=(4.8 * len(series), 3.6), squeeze=False)
  for ax, (phase, key, lines) in zip(axes[0], series):
    for label, pts in lines.items():
      steps, values = map(np.asarray, zip(*pts))
      smooth = None
      if len(values) > 10:
        w = max(len(values) // 10, 2)
        smooth = steps[w - 1:], np.convolve(values, np.ones(w) / w, mode="valid")
      if label is None:                      # one run: the curve and its moving average
        ax.plot(steps, values, marker="o" if len(values) < 30 else None, lw=1.2)
        if smooth is not None:
          ax.plot(*smooth, lw=2.2)
      else:                                  # several: one (averaged) line each
        steps, values = smooth if smooth is not None else (steps, values)
        ax.plot(steps, values, marker="o" if len(values) < 30 else None, lw=1.5, label=label)
    ax.set_title(f"{phase}: {key}")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if any(label is not None for label in lines):
      ax.legend(fontsize=8)
  fig.tight_layout()
  out_png = pathlib.Path(out_png)
  fig.savefig(out_png, dpi=110)
  plt.close(fig)
  return out_png
