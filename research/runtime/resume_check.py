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

The learning-rate schedule (`resolve_schedule`): config.optimizer.decay_steps = 0 means "the
num_train_steps this run started with", so it is made concrete when a run starts and recorded in
config.json; a resumed run keeps the recorded length. Raising num_train_steps therefore extends a
run without moving its schedule: past the schedule's end the LR stays at its final value. Setting
decay_steps explicitly changes the schedule; any change that moves the LR at the resume step is
logged with the old and new LR.
"""

from __future__ import annotations

import json
import time

import ml_collections
from absl import logging

from research import optimizers, paths
from research.config import model_config
from research.errors import ConfigError

REFUSED = ('model.', 'data.name', 'optimizer.name')
HARMLESS = ('num_train_steps', 'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
            'progress_bar', 'step_timeout_s', 'eval_batch_size', 'nan_policy',
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
  path = paths.join(workdir, 'checkpoints')
  return sorted(int(n) for n in paths.listdir(path) if n.isdigit()) if paths.isdir(path) else []


def format_diff(diff: dict[str, tuple]) -> str:
  return '\n'.join(f'  {k}: {json.dumps(a)} -> {json.dumps(b)}' for k, (a, b) in diff.items())


def recorded_config(workdir: str) -> dict | None:
  """The config.json of the run whose checkpoints WORKDIR holds, with optimizer.decay_steps
  concrete; None without checkpoints or a readable record (nothing to resume or compare)."""
  path = paths.join(workdir, 'config.json')
  if not checkpoint_steps(workdir) or not paths.exists(path):
    return None
  try:
    old = json.loads(paths.read_text(path))
  except (OSError, ValueError) as e:
    logging.warning('Cannot read %s (%s); resuming without comparing configs.', path, e)
    return None
  if isinstance(old.get('model'), dict):
    # Recorded before some model keys existed: that model used the defaults they have now.
    old['model'] = dict(json.loads(model_config().to_json_best_effort()), **old['model'])
  opt = old.get('optimizer')
  if isinstance(opt, dict) and not opt.get('decay_steps'):
    # Recorded before decay_steps existed (or unresolved): its schedule ended at its
    # num_train_steps, which is what make_schedule used for it.
    old['optimizer'] = dict(opt, decay_steps=old.get('num_train_steps'))
  return old


def resolve_schedule(workdir: str, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` whose optimizer.decay_steps is concrete (module doc): the explicit value,
  else the recorded run's schedule length when resuming, else num_train_steps."""
  steps = optimizers.schedule_length(config.optimizer, 0)  # Validates; 0 = not set.
  if not steps:
    old = recorded_config(workdir)
    recorded = old and old.get('optimizer', {}).get('decay_steps')
    steps = recorded if isinstance(recorded, int) and recorded > 0 else config.num_train_steps
  resolved = config.copy_and_resolve_references()
  resolved.optimizer.decay_steps = steps
  return resolved


def _lr_at(opt: dict, step: int) -> float:
  return float(optimizers.make_schedule(ml_collections.ConfigDict(opt), opt['decay_steps'])(step))


def warn_schedule_change(old: dict, config: ml_collections.ConfigDict, step: int) -> None:
  """Logs the LR at `step` under the recorded and the new schedule when a change moves it, and
  where an extended run goes past the end of its schedule."""
  new_opt = json.loads(config.to_json_best_effort())['optimizer']
  try:
    before, after = _lr_at(old['optimizer'], step), _lr_at(new_opt, step)
  except (AttributeError, KeyError, TypeError, ValueError, ConfigError) as e:
    logging.warning('Cannot rebuild the recorded LR schedule (%s); not comparing it.', e)
    return
  if abs(before - after) > 1e-6 * max(abs(before), abs(after)):
    changed = ', '.join(f'optimizer.{k} {json.dumps(a)} -> {json.dumps(b)}'
                        for k, (a, b) in config_diff(old['optimizer'], new_opt).items())
    logging.warning('The learning-rate schedule changed (%s): the first update after step %d '
                    '(the newest checkpoint) had LR %.4g and now has %.4g.', changed, step,
                    before, after)
  end = new_opt['decay_steps']
  if config.num_train_steps > max(end, step) and config.num_train_steps != old.get(
      'num_train_steps'):
    logging.warning('num_train_steps %s -> %d: the LR schedule keeps its length of %d steps '
                    '(config.optimizer.decay_steps), so steps %d..%d train at its final LR %.4g. '
                    'Set config.optimizer.decay_steps to give the schedule another length.',
                    old.get('num_train_steps'), config.num_train_steps, end, max(end, step) + 1,
                    config.num_train_steps, _lr_at(new_opt, end))


def check_resume(workdir: str, config: ml_collections.ConfigDict) -> dict:
  """Raises ConfigError if resuming WORKDIR with `config` would mix runs; returns the diff."""
  old = recorded_config(workdir)
  if old is None:
    return {}  # Nothing to protect: no checkpoint, or no record of what wrote it.
  steps = checkpoint_steps(workdir)
  config = resolve_schedule(workdir, config)
  diff = config_diff(old, json.loads(config.to_json_best_effort()))
  refused = {k: v for k, v in diff.items() if _matches(k, REFUSED)}
  if refused:
    raise ConfigError(
        f'{workdir} holds checkpoints (up to step {steps[-1]}) of a different model; refusing to '
        f'resume it with these changes:\n{format_diff(refused)}\nUse a new --workdir, or drop '
        'these overrides to continue the saved run. Nothing in the workdir was changed.')
  if not diff:
    return {}
  warn_schedule_change(old, config, steps[-1])
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
  paths.append_text(paths.join(workdir, 'config_changes.jsonl'), json.dumps(entry) + '\n')
