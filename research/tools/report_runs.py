"""A sweep folder's runs as data: each point's eval series, train loss, status and overrides.

Shared by the report's tables (report.py) and pictures (report_plots.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from research.errors import ConfigError
from research.tools import sweep as sweep_lib
from research.tools.sweep_run import MANIFEST, nonfinite_metrics, point_state, read_json

NOT_METRICS = ('step', 'split', 'num_targets')  # Counts, not quality: nothing to compare.
LOWER_IS_BETTER = ('loss', 'perplexity', 'bits_per', 'error')


@dataclasses.dataclass
class Run:
  name: str
  setting: str
  overrides: dict[str, Any]
  status: str  # done | failed | incomplete
  error: str | None
  evals: dict[str, dict[int, float]]  # metric -> step -> value
  train_loss: dict[int, float]
  config: dict


def lower_is_better(metric: str) -> bool:
  return any(part in metric for part in LOWER_IS_BETTER)


def read_metrics(path: str) -> tuple[dict[str, dict[int, float]], dict[int, float]]:
  """Eval series per metric and the train loss from metrics.jsonl (a resumed run's re-logged
  steps overwrite the earlier lines, so each step has one value)."""
  evals: dict[str, dict[int, float]] = {}
  train_loss: dict[int, float] = {}
  if not os.path.exists(path):
    return evals, train_loss
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        continue  # A line cut short by a crash.
      step = int(row.get('step', -1))
      if row.get('split') == 'train' and 'loss' in row:
        train_loss[step] = math.nan if row['loss'] is None else float(row['loss'])
      if row.get('split') != 'eval':
        continue
      for k, v in row.items():
        if k not in NOT_METRICS and (v is None or isinstance(v, (int, float))):
          evals.setdefault(k, {})[step] = math.nan if v is None else float(v)
  return evals, train_loss


def _flatten(d: dict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = tuple(v) if isinstance(v, list) else v
  return out


def _status(run_dir: str, config: dict, recorded: str | None) -> str:
  steps = config.get('num_train_steps')
  state = point_state(run_dir, steps) if steps else 'new'
  if state == 'done':
    return 'done'
  return 'failed' if state == 'nonfinite' or recorded == 'failed' else 'incomplete'


def _entries_without_manifest(workdir: str) -> list[dict]:
  """Every sub-folder that holds a run; its overrides are the config keys that differ."""
  dirs = sorted(d for d in os.listdir(workdir)
                if os.path.exists(os.path.join(workdir, d, 'config.json')))
  configs = {d: _flatten(read_json(os.path.join(workdir, d, 'config.json')) or {}) for d in dirs}
  keys = sorted({k for c in configs.values() for k in c})
  varying = [k for k in keys if len({repr(c.get(k)) for c in configs.values()}) > 1]
  points = [{k: configs[d].get(k) for k in varying} for d in dirs]
  settings = sweep_lib.setting_names(points)
  return [{'name': d, 'overrides': p, 'setting': s, 'status': None, 'error': None}
          for d, p, s in zip(dirs, points, settings, strict=True)]


def load_runs(workdir: str) -> tuple[list[Run], dict]:
  """The runs of a sweep folder and the sweep's metadata (config, shared overrides, baseline)."""
  if not os.path.isdir(workdir):
    raise ConfigError(f'--workdir={workdir} does not exist.')
  manifest = read_json(os.path.join(workdir, MANIFEST))
  entries = manifest['points'] if manifest else _entries_without_manifest(workdir)
  if not entries:
    raise ConfigError(f'No runs in {workdir}: expected {MANIFEST} or sub-folders with '
                      'config.json and metrics.jsonl. Run a sweep first: python launch.py '
                      f'--config=FILE --workdir={workdir} --sweep')
  runs = []
  for e in entries:
    run_dir = os.path.join(workdir, e['name'])
    config = read_json(os.path.join(run_dir, 'config.json')) or {}
    evals, train_loss = read_metrics(os.path.join(run_dir, 'metrics.jsonl'))
    status = _status(run_dir, config, e.get('status'))
    error = {'failed': e.get('error'),
             'incomplete': 'not finished: running, interrupted or not started'}.get(status)
    if status == 'failed' and not error:
      bad = nonfinite_metrics(read_json(os.path.join(run_dir, 'summary.json')) or {})
      error = f'non-finite final eval metrics: {bad}' if bad else 'failed'
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in e['overrides'].items()}
    runs.append(Run(e['name'], e['setting'], overrides, status, error, evals,
                    train_loss, config))
  meta = {'config': (manifest or {}).get('config', '(no sweep.json; settings inferred)'),
          'shared': (manifest or {}).get('shared_overrides', {}),
          'baseline': (manifest or {}).get('baseline') or runs[0].setting}
  return runs, meta


def final_value(series: dict[int, float]) -> float:
  return series[max(series)] if series else math.nan


def best_value(series: dict[int, float], metric: str) -> float:
  values = [v for v in series.values() if math.isfinite(v)]
  if not values:
    return math.nan
  return min(values) if lower_is_better(metric) else max(values)
