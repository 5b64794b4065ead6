"""The train loop: config -> data -> model -> sharded train step -> loop -> checkpoints/metrics.

`train_and_evaluate` is the whole story in one function; the step itself lives in train_step.py.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging

from research import (
  checkpointing,
  config_checks,
  data,
  models,
  optimizers,
  parallel,
  provenance,
  reliability,
  resume_check,
  transfer,
)
from research.metrics import MetricWriter, classification_report, save_confusion_png
from research.train_step import eval_step, init_state, train_step

NonFiniteError = reliability.NonFiniteError  # Loss or grads NaN/Inf; last good checkpoint kept.


def to_host(x) -> np.ndarray:
  """A device value on the host, also for replicated arrays that span several processes."""
  return np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x)


def write_config(workdir: str, config: ml_collections.ConfigDict) -> str:
  """Writes WORKDIR/config.json; a different earlier one is kept as config.<n>.json."""
  text = config.to_json_best_effort(sort_keys=True, indent=2)
  path = os.path.join(workdir, 'config.json')
  if jax.process_index() == 0:
    if os.path.exists(path) and open(path).read() != text:
      n = 1
      while os.path.exists(os.path.join(workdir, f'config.{n}.json')):
        n += 1
      os.replace(path, os.path.join(workdir, f'config.{n}.json'))
    with open(path, 'w') as f:
      f.write(text)
  return text


def one_program_in_flight() -> bool:
  """Whether to block after each step: several CPU devices in one process (fake test devices).

  They share the host's small thread pool: with programs queued ahead, threads blocked in one
  program's all-reduce starve a device still running the previous one and XLA deadlocks
  (measured: 8 fake devices on 2 cores hang within the first steps without this).
  """
  return jax.local_device_count() > 1 and jax.local_devices()[0].platform == 'cpu'


def evaluate(p_eval, params, dataset: data.Dataset, layout: parallel.Layout) -> dict:
  """Exact metrics over the whole eval split (padded batches, padding masked out)."""
  totals = None
  for batch in dataset.eval_batches():
    sums = p_eval(params, layout.put_batch(batch))
    if one_program_in_flight():
      jax.block_until_ready(sums)
    totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
  totals = jax.tree.map(to_host, totals)
  weight = float(totals['weight_sum'])
  out = {'loss': float(totals['loss_sum']) / weight,
         'accuracy': float(totals['correct_sum']) / weight, 'num_targets': weight}
  if dataset.meta.get('task') == 'lm':
    out.update(bits_per_char=out['loss'] / np.log(2), perplexity=float(np.exp(out['loss'])))
  if 'confusion' in totals:
    out.update(classification_report(totals['confusion']))
    out['confusion'] = totals['confusion']
  return out


def summarize(pending: list[dict]) -> dict[str, float]:
  """Means of the steps since the last log point: the only host sync in the loop."""
  host = jax.device_get([{k: to_host(v) for k, v in m.items()} for m in pending])
  finite = [m for m in host if not np.max(m['nonfinite'])] or host  # Skipped updates left out.
  out = {k: float(np.mean([np.mean(m[k]) for m in finite])) for k in host[0]}
  out['nonfinite'] = float(sum(np.max(m['nonfinite']) for m in host))
  return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains to config.num_train_steps (resuming from WORKDIR if it has checkpoints)."""
  # --- Checks before any compute --------------------------------------------------------------
  config_checks.check_train_config(config)
  config_checks.check_workdir(workdir)
  is_main = jax.process_index() == 0
  fault = reliability.check_config(config)
  # optimizer.decay_steps made concrete (a resumed run keeps its recorded schedule length).
  config = resume_check.resolve_schedule(workdir, config)
  changes = resume_check.check_resume(workdir, config)  # Refuses a changed model.
  dataset = data.get_dataset(config, jax.process_index(), jax.process_count(), workdir=workdir)
  model = models.get_model(config.model, dataset.meta)
  tx, schedule = optimizers.make_optimizer(config.optimizer, config.num_train_steps)
  example = {k: v[:1] for k, v in dataset.train_batch(0).items()}
  init = functools.partial(init_state, model, tx, example, config.seed)
  boxed = jax.eval_shape(init)
  layout = parallel.make_layout(config.parallel, boxed, config.batch_size)
  print(parallel.describe(layout), flush=True)  # Every process, before any compute.
  if config.eval_batch_size % layout.data_parallel:
    raise config_checks.ConfigError(f'eval_batch_size {config.eval_batch_size} does not divide '
                                    f'over the data-parallel size {layout.data_parallel}.')
  config_json = write_config(workdir, config)  # Only once the input checked out.
  if is_main:
    provenance.write(workdir, config_json)
    resume_check.record(workdir, changes)

  # --- State: restored from the newest good checkpoint, else fresh ------------------------------
  manager = checkpointing.make_manager(workdir, config.checkpoint)
  abstract = checkpointing.abstract_like(nn.unbox(boxed), layout.state_sharding)
  restored = checkpointing.restore_latest(manager, abstract)
  pending, skipped = [], 0  # Train metrics since the last log point; skipped NaN updates.
  if restored:
    start_step, state, position = restored
    pending = reliability.pending_from_json(position.get('pending_metrics'))
    skipped = position.get('skipped_updates', 0)
    if position.get('seed') != config.seed or position.get('batch_size') != config.batch_size:
      logging.warning('Resuming with a different seed or batch size than the checkpoint '
                      '(%s): the data order will differ from an uninterrupted run.', position)
    logging.info('Resumed from step %d in %s', start_step, manager.directory)
  else:
    start_step = 0
    state = jax.jit(lambda: nn.unbox(init()), out_shardings=layout.state_sharding)()
    if config.get('init_from'):  # Pre-trained params by name and shape (fresh runs only).
      state = transfer.init_from(config, state, workdir)
  for name in ('metrics.jsonl', 'perf.jsonl'):  # Lines a killed run wrote past the checkpoint.
    if is_main and (dropped := reliability.truncate_jsonl(os.path.join(workdir, name), start_step)):
      logging.warning('Dropped %d lines after step %d from %s (the run resumes there).', dropped,
                      start_step, name)
  state = layout.to_strategy(state)
  num_params = sum(x.size for x in jax.tree.leaves(abstract.params))
  logging.info('Model %s: %s parameters; %s; strategy %s, mesh %s', config.model.name,
               f'{num_params:,}', jax.devices()[0].device_kind, layout.strategy,
               dict(layout.mesh.shape))

  is_classifier = dataset.meta.get('task') == 'classification'
  num_classes = dataset.meta['num_classes'] if is_classifier else None
  p_train, p_eval = parallel.compile_steps(
      layout,
      functools.partial(train_step, apply_fn=model.apply, tx=tx, schedule=schedule,
                        nan_policy=config.nan_policy,
                        grad_accum_steps=config.get('grad_accum_steps', 1)),
      functools.partial(eval_step, apply_fn=model.apply, num_classes=num_classes))
  writer = MetricWriter(workdir, enabled=is_main)

  def eval_and_log(step: int, params) -> dict:
    metrics = evaluate(p_eval, params, dataset, layout)
    confusion = metrics.pop('confusion', None)
    writer.write(step, 'eval', metrics)
    if confusion is not None and is_main:
      save_confusion_png(confusion, os.path.join(workdir, 'confusion_matrix.png'),
                         f'{config.data.name} {config.data.eval_split}, step {step}')
    for hook in dataset.meta.get('eval_hooks', ()):
      hook(step, params, model, workdir, writer)
    logging.info('eval step %d: %s', step, {k: round(v, 4) for k, v in metrics.items()})
    return metrics

  # --- The loop ------------------------------------------------------------------------------
  from tqdm import tqdm

  total = config.num_train_steps
  bar = tqdm(total=total, initial=start_step, disable=not is_main or not config.progress_bar,
             dynamic_ncols=True, mininterval=1.0)
  prefetch = None
  eval_metrics, t_start, t_log, step, stop = {}, time.time(), time.time(), start_step, False
  wait_at_log, cpu_at_log = 0.0, time.process_time()
  # Multi-process: gloo CPU collectives deadlock when ~50 steps are queued with no host sync, so
  # block on the metrics at least every 10 steps (a no-op for speed on real accelerators).
  if one_program_in_flight():
    sync_every = 1
  else:
    sync_every = min(config.log_every_steps, 10) if jax.process_count() > 1 else 0
  signals = reliability.StopSignals()  # SIGTERM/SIGINT: finish the step, save, exit 0.
  reliability.start_heartbeat()  # Multi-process: lets a survivor name a dead process.
  watchdog = reliability.Watchdog(config.step_timeout_s, reliability.describe_processes)
  try:
    prefetch = data.pipeline.Prefetcher(
        lambda s: layout.put_batch(fault.poison(s, dataset.train_batch(s))), start_step)
    while step < total:
      _, batch = prefetch.next()
      state, metrics = p_train(state, batch)  # Dispatched async; the loop runs ahead.
      pending.append(metrics)
      step += 1
      watchdog.pet(step)
      fault.after_step(step)
      if sync_every and step % sync_every == 0:
        jax.block_until_ready(metrics)
      is_eval = step % config.eval_every_steps == 0 or step == total
      is_ckpt = step % config.checkpoint_every_steps == 0 or step == total
      is_log = step % config.log_every_steps == 0 or is_eval or is_ckpt
      stop = signals.should_stop(is_log, jax.process_count())
      if is_log or stop:  # Every save follows this check, so a NaN state is never saved.
        train_metrics = summarize(pending)
        if train_metrics['nonfinite'] and config.nan_policy == 'stop':
          checkpointing.wait(manager)  # In-flight saves of earlier (finite) steps complete.
          steps = checkpointing.complete_steps(str(manager.directory))
          raise NonFiniteError(reliability.nonfinite_report(
              pending, step, steps[-1] if steps else None, str(manager.directory)))
      if is_log:
        if config.nan_policy == 'skip':
          skipped += int(train_metrics['nonfinite'])
          train_metrics['skipped_updates'] = skipped
          if train_metrics['nonfinite']:
            logging.warning('Skipped %d non-finite updates up to step %d (%d in total).',
                            train_metrics['nonfinite'], step, skipped)
        checkpointing.check_for_errors(manager)  # A failed async save stops the run here.
        now = time.time()
        steps_per_sec = len(pending) / (now - t_log)
        perf = {'steps_per_sec': steps_per_sec,
                'examples_per_sec': steps_per_sec * config.batch_size,
                'input_wait_frac': (prefetch.wait_seconds - wait_at_log) / (now - t_log),
                # This process's CPU time (all threads): what the loop costs, whatever else runs.
                'cpu_seconds_per_step': (time.process_time() - cpu_at_log) / len(pending)}
        writer.write(step, 'train', train_metrics)
        writer.write(step, 'perf', perf, file='perf.jsonl')
        bar.set_postfix(loss=f'{train_metrics["loss"]:.4f}', refresh=False)
        bar.update(step - bar.n)
        pending, t_log, wait_at_log = [], time.time(), prefetch.wait_seconds
        cpu_at_log = time.process_time()
      if is_eval:
        eval_metrics = eval_and_log(step, state.params)
        watchdog.pet(step)
      if is_ckpt or stop:
        fault.before_save(step)
        checkpointing.save(manager, step, layout.to_global(state),
                           {'step': step, 'seed': config.seed, 'batch_size': config.batch_size,
                            'examples_seen': step * config.batch_size, 'skipped_updates': skipped,
                            'pending_metrics': reliability.pending_to_json(pending)},
                           metrics=eval_metrics if is_eval else None)
        watchdog.pet(step)
      if stop:
        break
    if not eval_metrics and not stop:  # Resumed an already finished run: report its final eval.
      eval_metrics = eval_and_log(step, state.params)
  finally:
    signals.close()
    bar.close()
    if prefetch is not None:
      prefetch.close()
    checkpointing.wait(manager)  # Async saves finish (and raise their errors) before exit.
    manager.close()
    writer.close()
    watchdog.close()
  wall = time.time() - t_start
  if stop:
    message = (f'Stopped by {signals.received} after step {step}: checkpoint saved in '
               f'{manager.directory}; run the same command again to resume.')
    logging.warning('%s', message)
    if is_main:
      print(message, file=sys.stderr, flush=True)
    return {'step': step, 'wall_seconds': wall, 'preempted': True}
  summary = {'step': step, 'wall_seconds': wall, **eval_metrics}
  if is_main:
    with open(os.path.join(workdir, 'summary.json'), 'w') as f:
      json.dump(summary, f, indent=2)
  logging.info('Done: step %d, eval %s, %.1fs (input wait %.1fs).', step,
               {k: round(v, 4) for k, v in eval_metrics.items()}, wall,
               prefetch.wait_seconds if prefetch else 0.0)
  return summary
