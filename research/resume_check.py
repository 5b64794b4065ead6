"""Config safety on resume: a workdir with checkpoints continues only the run that wrote them.

`check_resume` compares the config about to run with WORKDIR/config.json, before any compute:
  refused  model.*, data.name, optimizer.name: the checkpoint belongs to another model or its
           shapes differ; fails with a diff of the changed keys and nothing is touched.
  allowed  HARMLESS keys (steps, intervals, progress bar, watchdog, paths, topology): logged.
  warned   anything else (learning rate, seed, batch size, ...): allowed, but the run no longer
           equals an uninterrupted one, so the log says so.
Accepted changes are appended to WORKDIR/config_changes.jsonl (`record`), and train.write_config
keeps the previous config.json as config.<n>.json, so the history of a workdir is never lost.
Both happen only after the run's input checked out, so a failed start changes nothing.
"""

from __future__ import annotations

import json
import os
import time

import ml_collections
from absl import logging

from research.config_checks import ConfigError

REFUSED = ('model.', 'data.name', 'optimizer.name')
HARMLESS = ('num_train_steps', 'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
            'progress_bar', 'step_timeout_s', 'fault_injection', 'eval_batch_size', 'nan_policy',
            'data.data_dir', 'data.manual_dir', 'data.eval_split', 'checkpoint.', 'parallel.',
            'benchmark.')
MISSING = '<absent>'


def flatten(tree: dict, prefix: str = '') -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def config_diff(old: dict, new: dict) -> dict[str, tuple]:
  """{dotted key: (old, new)} for every leaf that differs, added or removed (JSON values)."""
  old, new = flatten(old), flatten(new)
  return {k: (old.get(k, MISSING), new.get(k, MISSING)) for k in sorted(old.keys() | new.keys())
          if old.get(k, MISSING) != new.get(k, MISSING)}


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
  return any(key == p or (p.endswith('.') and key.startswith(p)) for p in patterns)


def checkpoint_steps(workdir: str) -> list[int]:
  path = os.path.join(workdir, 'checkpoints')
  return sorted(int(n) for n in os.listdir(path) if n.isdigit()) if os.path.isdir(path) else []


def format_diff(diff: dict[str, tuple]) -> str:
  return '\n'.join(f'  {k}: {json.dumps(a)} -> {json.dumps(b)}' for k, (a, b) in diff.items())


def check_resume(workdir: str, config: ml_collections.ConfigDict) -> dict:
  """Raises ConfigError if resuming WORKDIR with `config` would mix runs; returns the diff."""
  steps = checkpoint_steps(workdir)
  path = os.path.join(workdir, 'config.json')
  if not steps or not os.path.exists(path):
    return {}  # Nothing to protect: no checkpoint, or no record of what wrote it.
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, ValueError) as e:
    logging.warning('Cannot read %s (%s); resuming without comparing configs.', path, e)
    return {}
  diff = config_diff(old, json.loads(config.to_json_best_effort()))
  refused = {k: v for k, v in diff.items() if _matches(k, REFUSED)}
  if refused:
    raise ConfigError(
        f'{workdir} holds checkpoints (up to step {steps[-1]}) of a different model; refusing to '
        f'resume it with these changes:\n{format_diff(refused)}\nUse a new --workdir, or drop '
        'these overrides to continue the saved run. Nothing in the workdir was changed.')
  if not diff:
    return {}
  risky = {k: v for k, v in diff.items() if not _matches(k, HARMLESS)}
  logging.info('Resuming %s with changed config keys:\n%s', workdir, format_diff(diff))
  if risky:
    logging.warning('These changes make the resumed run differ from an uninterrupted one:\n%s',
                    format_diff(risky))
  return diff


def record(workdir: str, diff: dict[str, tuple]) -> None:
  """Appends accepted changes to WORKDIR/config_changes.jsonl (once the run's input checked out)."""
  if not diff:
    return
  steps = checkpoint_steps(workdir)
  entry = {'time': time.strftime('%Y-%m-%dT%H:%M:%S'),
           'latest_checkpoint': steps[-1] if steps else None,
           'changes': {k: list(v) for k, v in diff.items()}}
  with open(os.path.join(workdir, 'config_changes.jsonl'), 'a') as f:
    f.write(json.dumps(entry) + '\n')
