"""The report's pictures: learning curves per metric (seed spread shaded), TensorBoard HParams."""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Sequence

import numpy as np

from research.tools import report_runs


def _curve(runs: Sequence[report_runs.Run], series_of) -> tuple[np.ndarray, np.ndarray] | None:
  """Steps every seed logged, and the values there as [runs, steps]."""
  all_series = [series_of(r) for r in runs]
  steps = sorted(set.intersection(*(set(s) for s in all_series))) if all_series else []
  if not steps:
    return None
  return np.asarray(steps), np.asarray([[s[t] for t in steps] for s in all_series])


def _plot(path: str, title: str, curves: dict[str, tuple[np.ndarray, np.ndarray]],
          log_y: bool = False) -> None:
  import matplotlib  # Heavy: imported only when a report draws its curves.

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
  for label, (steps, values_RxS) in curves.items():
    mean = np.nanmean(values_RxS, axis=0)
    (line,) = ax.plot(steps, mean, marker='.' if len(steps) < 20 else None,
                      label=f'{label} (n={len(values_RxS)})')
    if len(values_RxS) > 1:
      std = np.nanstd(values_RxS, axis=0, ddof=1)
      ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
  if log_y:
    ax.set_yscale('log')
  ax.set(xlabel='step', title=title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc='best')
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def _safe(name: str) -> str:
  return re.sub(r'[^A-Za-z0-9._-]', '_', name)


def learning_curves(workdir: str, runs: Sequence[report_runs.Run], metrics: Sequence[str],
                    labels: dict[str, str]) -> list[str]:
  """One PNG per eval metric (and the train loss): a line per setting, mean ± std over seeds."""
  settings = list(dict.fromkeys(r.setting for r in runs))
  by_setting = {s: [r for r in runs if r.setting == s] for s in settings}
  panels = [(f'eval {m}', f'curves_{_safe(m)}.png', lambda r, m=m: r.evals.get(m, {}), False)
            for m in metrics]
  panels.append(('train loss', 'curves_train_loss.png', lambda r: r.train_loss, True))
  paths = []
  for title, name, series_of, log_y in panels:
    curves = {}
    for s in settings:
      curve = _curve(by_setting[s], series_of)
      if curve is not None:
        curves[labels[s]] = curve
    if curves:
      path = os.path.join(workdir, name)
      _plot(path, f'{title} (mean ± std over seeds)', curves, log_y)
      paths.append(path)
  return paths


def _hparam_value(v):
  return v if isinstance(v, (bool, int, float, str)) else str(v)


def write_hparams(workdir: str, runs: Sequence[report_runs.Run], metrics: Sequence[str]) -> str:
  """DIR/hparams/<point>: one HParams session per finished point (rewritten on every report)."""
  from tensorboardX import SummaryWriter  # Heavy (protobuf): only when HParams are written.

  root = os.path.join(workdir, 'hparams')
  shutil.rmtree(root, ignore_errors=True)  # Generated here only; a rerun must not duplicate.
  with SummaryWriter(root) as writer:
    for r in runs:
      hparams = {k: _hparam_value(v) for k, v in r.overrides.items()}
      hparams['setting'] = r.setting
      values = {}
      for m in metrics:
        series = r.evals.get(m, {})
        values[f'hparam/final_{m}'] = report_runs.final_value(series)
        values[f'hparam/best_{m}'] = report_runs.best_value(series, m)
      writer.add_hparams(hparams, {k: v for k, v in values.items() if math.isfinite(v)},
                         name=r.name)
  return root
