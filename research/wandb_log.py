"""Optional Weights & Biases logging, next to metrics.jsonl and TensorBoard (never instead).

On when `config.wandb.project` is set (`pip install wandb`). The run id is kept in
WORKDIR/wandb_run_id.txt, so a resumed run continues the same W&B run; sweep points share
`config.wandb.group` (the sweep folder's name by default, set by research/sweep_run.py).
`config.wandb.mode=offline` (or WANDB_MODE=offline) logs to WORKDIR/wandb for `wandb sync`.
Only the process that writes metrics (process 0) starts a run.
"""

from __future__ import annotations

import json
import os
import secrets
import string
from typing import Any

from absl import logging

from research.errors import ConfigError

RUN_ID_FILE = 'wandb_run_id.txt'


def settings_from_workdir(workdir: str) -> dict[str, Any] | None:
  """config.wandb from WORKDIR/config.json (train.py writes it before the metric writer starts),
  or None when W&B is off."""
  try:
    with open(os.path.join(workdir, 'config.json')) as f:
      config = json.load(f)
  except (OSError, ValueError):
    return None
  settings = config.get('wandb') or {}
  return {'settings': settings, 'config': config} if settings.get('project') else None


def run_id(workdir: str) -> str:
  """The W&B run id of this workdir: created once, then reused by every resume."""
  path = os.path.join(workdir, RUN_ID_FILE)
  if os.path.exists(path):
    with open(path) as f:
      return f.read().strip()
  alphabet = string.ascii_lowercase + string.digits  # W&B ids: [a-z0-9].
  new_id = ''.join(secrets.choice(alphabet) for _ in range(8))
  with open(path, 'w') as f:
    f.write(new_id + '\n')
  return new_id


class WandbSink:
  """Mirrors MetricWriter.write() to one W&B run."""

  def __init__(self, workdir: str, settings: dict[str, Any], config: dict[str, Any]):
    try:
      import wandb
    except ImportError as e:
      raise ConfigError('config.wandb.project is set but wandb is not installed: '
                        '`pip install wandb`, or leave config.wandb.project empty.') from e
    self.run = wandb.init(
        project=settings['project'], entity=settings.get('entity') or None,
        group=settings.get('group') or None, name=os.path.basename(os.path.abspath(workdir)),
        id=run_id(workdir), resume='allow', dir=workdir, config=config,
        mode=settings.get('mode') or None)
    logging.info('W&B run %s (project %s, group %s)', self.run.id, settings['project'],
                 settings.get('group') or '-')

  def log(self, step: int, split: str, scalars: dict[str, Any]) -> None:
    values = {f'{split}/{k}': v for k, v in scalars.items()
              if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if values:
      self.run.log(values, step=int(step))

  def close(self) -> None:
    self.run.finish()


def maybe_start(workdir: str) -> WandbSink | None:
  found = settings_from_workdir(workdir)
  return WandbSink(workdir, found['settings'], found['config']) if found else None
