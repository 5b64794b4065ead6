"""The train loop: config -> data -> model -> sharded train step -> loop -> checkpoints/metrics.

`train_and_evaluate` is the whole story; the step is train_step.py, the setup build.py, the
actions between steps hooks.py, and what keeps a run safe runtime/.
"""

from __future__ import annotations

import contextlib
import json
import sys

import jax
import ml_collections
from absl import logging

from research import (
  build,
  checkpointing,
  config_checks,
  console,
  data,
  hf,
  hooks,
  parallel,
  paths,
  provenance,
  runtime,
  transfer,
)
from research.runtime import resume_check


def write_config(workdir: str, config: ml_collections.ConfigDict) -> str:
  """Writes WORKDIR/config.json; a different earlier one is kept as config.<n>.json."""
  text = config.to_json_best_effort(sort_keys=True, indent=2)
  path = paths.join(workdir, 'config.json')
  if jax.process_index() == 0:
    if paths.exists(path) and paths.read_text(path) != text:
      n = 1
      while paths.exists(paths.join(workdir, f'config.{n}.json')):
        n += 1
      paths.get(path).replace(paths.join(workdir, f'config.{n}.json'))
    paths.get(path).write_text(text)
  return text


def start(config: ml_collections.ConfigDict,
          workdir: str) -> tuple[ml_collections.ConfigDict, build.Setup]:
  """Every check before any compute; then config.json, provenance and the config history."""
  config_checks.check_train_config(config)
  config_checks.check_workdir(workdir)
  runtime.check_config(config)
  config = hf.configure(config)  # init_from=hf:PATH: its config.json's architecture.
  # optimizer.decay_steps made concrete (a resumed run keeps its recorded schedule length).
  config = resume_check.resolve_schedule(workdir, config)
  changes = resume_check.check_resume(workdir, config)  # Refuses a changed model.
  dataset = data.get_dataset(config, jax.process_index(), jax.process_count(), workdir=workdir)
  setup = build.build(config, dataset)
  fresh = not checkpointing.complete_steps(paths.join(workdir, 'checkpoints'))
  if fresh and hf.parse(config.get('init_from', '')):
    transfer.hf_values(config, setup.abstract.params)  # Shapes that do not fit: refused now.
  print(parallel.describe(setup.layout), flush=True)  # Every process, before any compute.
  config_json = write_config(workdir, config)  # Only once the input checked out.
  console.log_to_file(workdir, jax.process_index())
  if jax.process_index() == 0:
    provenance.write(workdir, config_json)
    resume_check.record(workdir, changes)
  return config, setup


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains to config.num_train_steps, resuming from WORKDIR's newest good checkpoint."""
  config, setup = start(config, workdir)
  p_train, p_eval = setup.compiled_steps()
  total, stop = config.num_train_steps, False
  with runtime.Guards(config) as guards, hooks.Run(setup, workdir, p_eval, guards) as run:
    state, step = run.restore_or_init()
    if step == 0 and config.get('eval_at_start'):  # E.g. what a loaded checkpoint scores.
      run.evaluate(0, state)
    actions = [hooks.Every(config.eval_every_steps, run.evaluate),
               hooks.Every(config.checkpoint_every_steps, run.save)]
    make_batch = lambda s: setup.layout.put_batch(guards.batch(s, setup.dataset.train_batch(s)))
    with contextlib.closing(data.pipeline.Prefetcher(make_batch, step)) as batches:
      run.prefetch_wait = lambda: batches.wait_seconds
      while step < total and not stop:
        _, batch = batches.next()
        state, step_metrics = p_train(state, batch)  # Dispatched async: the loop runs ahead.
        step += 1
        guards.stepped(step)
        run.record(step, step_metrics)
        due = [a.action for a in actions if a.due(step, total)]
        is_log = step % config.log_every_steps == 0 or bool(due)
        stop = guards.should_stop(is_log)  # SIGTERM/SIGINT: save this step, then exit 0.
        if is_log or stop:
          train_metrics = run.check_finite(step)  # NaN/Inf raise here: nothing is saved.
        if is_log:
          run.log(step, train_metrics)
        if stop and run.save not in due:
          due.append(run.save)
        for action in due:
          action(step, state)
    if not run.eval_metrics and not stop:  # Resumed a finished run: report its final eval.
      run.evaluate(step, state)
  return finish(run, step, guards.stop_reason if stop else None)


def finish(run: hooks.Run, step: int, stopped_by: str | None) -> dict:
  """summary.json (or, when a signal stopped the run, how to resume it)."""
  wall = run.elapsed()
  if stopped_by:
    message = (f'Stopped by {stopped_by} after step {step}: checkpoint saved in '
               f'{run.manager.directory}; run the same command again to resume.')
    logging.warning('%s', message)
    if run.is_main:
      print(message, file=sys.stderr, flush=True)
    return {'step': step, 'wall_seconds': wall, 'preempted': True}
  summary = {'step': step, 'wall_seconds': wall, **run.eval_metrics}
  if run.is_main:
    paths.get(paths.join(run.workdir, 'summary.json')).write_text(json.dumps(summary, indent=2))
  logging.info('Done: step %d, eval %s, %.1fs (input wait %.1fs).', step,
               {k: round(v, 4) for k, v in run.eval_metrics.items()}, wall, run.prefetch_wait())
  return summary
