"""What the train loop does between steps: log, evaluate, checkpoint (Levanter-style hooks).

`Run` holds the loop's bookkeeping (metrics since the last log point, the newest eval, the
checkpoint manager, the metric writer, the progress bar) and offers one method per action;
train.py registers them with `Every(n, action)` and the loop calls whichever are due.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from research import build, checkpointing, console, data, metrics, parallel, paths, transfer
from research.data.tokenizers import CharVocab
from research.errors import NonFiniteError
from research.runtime import Guards

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Every:
  """`action(step, state)` after every `steps`-th update, and after the last one."""

  steps: int
  action: Callable[[int, PyTree], object]

  def due(self, step: int, total: int) -> bool:
    return step % self.steps == 0 or step == total


def to_host(x) -> np.ndarray:
  """A device value on the host, also for replicated arrays that span several processes."""
  return np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x)


def evaluate(p_eval: Callable, params: PyTree, dataset: data.Dataset,
             layout: parallel.Layout) -> dict:
  """Exact metrics over the whole eval split (padded batches, padding masked out)."""
  totals = None
  for batch in dataset.eval_batches():
    sums = p_eval(params, layout.put_batch(batch))
    if parallel.one_program_in_flight():
      jax.block_until_ready(sums)
    totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
  totals = jax.tree.map(to_host, totals)
  weight = float(totals['weight_sum'])
  out = {'loss': float(totals['loss_sum']) / weight,
         'accuracy': float(totals['correct_sum']) / weight, 'num_targets': weight}
  if dataset.meta.task == 'lm':  # Loss per token in bits: per character only if tokens are.
    per_char = getattr(dataset.tokenizer, 'KIND', None) == CharVocab.KIND
    out['bits_per_char' if per_char else 'bits_per_token'] = out['loss'] / np.log(2)
    out['perplexity'] = float(np.exp(out['loss']))
  if 'bytes_sum' in totals:  # Compares across tokenizers: nats summed / ln 2 / UTF-8 bytes.
    out['bits_per_byte'] = float(totals['loss_sum']) / np.log(2) / float(totals['bytes_sum'])
  if 'confusion' in totals:
    out.update(metrics.classification_report(totals['confusion']))
    out['confusion'] = totals['confusion']
  return out


def summarize(pending: list[dict]) -> dict[str, float]:
  """Means of the steps since the last log point: the only host sync in the loop."""
  host = jax.device_get([{k: to_host(v) for k, v in m.items()} for m in pending])
  finite = [m for m in host if not np.max(m['nonfinite'])] or host  # Skipped updates left out.
  out = {k: float(np.mean([np.mean(m[k]) for m in finite])) for k in host[0]}
  out['nonfinite'] = float(sum(np.max(m['nonfinite']) for m in host))
  return out


def sync_every() -> int:
  """Block on a step's metrics every N steps (0 = never; the loop otherwise runs ahead).

  Several CPU devices in one process deadlock with programs queued (parallel.py), and gloo CPU
  collectives between processes deadlock with ~50 steps queued and no host sync; a no-op for
  speed on real accelerators.
  """
  if parallel.one_program_in_flight():
    return 1
  return 10 if jax.process_count() > 1 else 0


class Run:
  """The loop's bookkeeping and its actions. Use as a context manager: on exit, async saves
  finish (raising their errors) and every writer is closed."""

  def __init__(self, setup: build.Setup, workdir: str, p_eval: Callable, guards: Guards):
    self.setup, self.config, self.workdir = setup, setup.config, workdir
    self.p_eval, self.guards = p_eval, guards
    self.is_main = jax.process_index() == 0
    self.manager = checkpointing.make_manager(workdir, self.config.checkpoint)
    self.writer = metrics.MetricWriter(workdir, enabled=self.is_main)
    self.pending: list[dict] = []  # Per-step train metrics (on device) since the last log point.
    self.skipped = 0  # Non-finite updates dropped so far (nan_policy='skip').
    self.eval_metrics: dict = {}  # The newest evaluation's (for the summary and best-k).
    self._eval_step = -1
    self.prefetch_wait = lambda: 0.0  # Seconds the loop waited for input (set by the loop).
    self.bar = None
    self._sampler: Callable | None = None  # The compiled text sampler (LMs with config.sample).
    self._sync_every = min(sync_every(), self.config.log_every_steps)
    self._t_start = self._t_log = time.time()
    self._wait_at_log, self._cpu_at_log = 0.0, time.process_time()

  def __enter__(self) -> Run:
    return self

  def __exit__(self, *exc) -> None:
    if self.bar is not None:
      self.bar.close()
    checkpointing.wait(self.manager)  # Async saves finish (and raise their errors) before exit.
    self.manager.close()
    self.writer.close()

  def elapsed(self) -> float:
    return time.time() - self._t_start

  # --- State ------------------------------------------------------------------------------------

  def restore_or_init(self) -> tuple[PyTree, int]:
    """(state in the strategy's layout, step): the newest good checkpoint, else a fresh state."""
    config, setup = self.config, self.setup
    restored = checkpointing.restore_latest(self.manager, setup.abstract)
    if restored:
      step, state, position = restored
      self.pending = metrics.pending_from_json(position.get('pending_metrics'))
      self.skipped = position.get('skipped_updates', 0)
      if position.get('seed') != config.seed or position.get('batch_size') != config.batch_size:
        logging.warning('Resuming with a different seed or batch size than the checkpoint '
                        '(%s): the data order will differ from an uninterrupted run.', position)
      console.show(f'Resumed from step {step} in {self.manager.directory}')
    else:
      step, state = 0, setup.fresh_state()
      if config.get('init_from'):  # Pre-trained params by name and shape (fresh runs only).
        state = transfer.init_from(config, state, self.workdir)
    for name in ('metrics.jsonl', 'perf.jsonl'):  # Lines a killed run wrote past the checkpoint.
      path = paths.join(self.workdir, name)
      if self.is_main and (dropped := metrics.truncate_jsonl(path, step)):
        logging.warning('Dropped %d lines after step %d from %s (the run resumes there).',
                        dropped, step, name)
    logging.info('Model %s: %s parameters; %s; strategy %s, mesh %s', config.model.name,
                 f'{setup.num_params:,}', jax.devices()[0].device_kind, setup.layout.strategy,
                 dict(setup.layout.mesh.shape))
    self.bar = tqdm(total=config.num_train_steps, initial=step, dynamic_ncols=True,
                    disable=not self.is_main or not config.progress_bar, mininterval=1.0)
    return setup.layout.to_strategy(state), step

  # --- Actions ----------------------------------------------------------------------------------

  def record(self, step: int, step_metrics: dict) -> None:
    """Keeps a step's metrics on device until the next log point."""
    self.pending.append(step_metrics)
    if self._sync_every and step % self._sync_every == 0:
      jax.block_until_ready(step_metrics)

  def check_finite(self, step: int) -> dict[str, float]:
    """The pending steps' means; raises NonFiniteError (nan_policy='stop') before anything is
    evaluated or saved, so a NaN state never reaches a checkpoint."""
    train_metrics = summarize(self.pending)
    if train_metrics['nonfinite'] and self.config.nan_policy == 'stop':
      checkpointing.wait(self.manager)  # In-flight saves of earlier (finite) steps complete.
      steps = checkpointing.complete_steps(str(self.manager.directory))
      raise NonFiniteError(metrics.nonfinite_report(
          self.pending, step, steps[-1] if steps else None, str(self.manager.directory)))
    return train_metrics

  def log(self, step: int, train_metrics: dict[str, float]) -> None:
    """Train means and speed since the last log point -> metrics.jsonl, perf.jsonl, the bar."""
    if self.config.nan_policy == 'skip':
      self.skipped += int(train_metrics['nonfinite'])
      train_metrics['skipped_updates'] = self.skipped
      if train_metrics['nonfinite']:
        logging.warning('Skipped %d non-finite updates up to step %d (%d in total).',
                        train_metrics['nonfinite'], step, self.skipped)
    checkpointing.check_for_errors(self.manager)  # A failed async save stops the run here.
    now, n = time.time(), len(self.pending)
    steps_per_sec = n / (now - self._t_log)
    perf = {'steps_per_sec': steps_per_sec,
            'examples_per_sec': steps_per_sec * self.config.batch_size,
            'input_wait_frac': (self.prefetch_wait() - self._wait_at_log) / (now - self._t_log),
            # This process's CPU time (all threads): what the loop costs, whatever else runs.
            'cpu_seconds_per_step': (time.process_time() - self._cpu_at_log) / n}
    self.writer.write(step, 'train', train_metrics)
    self.writer.write(step, 'perf', perf, file='perf.jsonl')
    self.bar.set_postfix(loss=f'{train_metrics["loss"]:.4f}', refresh=False)
    self.bar.update(step - self.bar.n)
    self.pending, self._t_log, self._wait_at_log = [], time.time(), self.prefetch_wait()
    self._cpu_at_log = time.process_time()

  def evaluate(self, step: int, state: PyTree) -> dict:
    """The whole eval split -> metrics.jsonl, one console line, the confusion matrix, samples."""
    setup = self.setup
    out = evaluate(self.p_eval, state.params, setup.dataset, setup.layout)
    confusion = out.pop('confusion', None)
    self.writer.write(step, 'eval', out)
    if confusion is not None and self.is_main:
      metrics.save_confusion_png(confusion, os.path.join(self.workdir, 'confusion_matrix.png'),
                                 f'{self.config.data.name} {self.config.data.eval_split}, '
                                 f'step {step}')
    if setup.sampling is not None:
      self.sample_text(step, state)
    logging.info('eval step %d: %s', step, {k: round(v, 4) for k, v in out.items()})
    if self.is_main:
      self.bar.write(console.eval_line(step, out))
    self.eval_metrics, self._eval_step = out, step
    self.guards.progressed(step)
    return out

  def sample_text(self, step: int, state: PyTree) -> None:
    """One sample from config.sample's prompt -> TensorBoard text and WORKDIR/samples.txt."""
    sampling, tokenizer = self.setup.sampling, self.setup.dataset.tokenizer
    if self._sampler is None:  # Compiled on first use (runs without evaluations never pay).
      self._sampler = sampling.sampler(self.setup.model)
    # pmap keeps one copy of the params per device (a leading axis): sample with the first.
    params = jax.tree.map(lambda x, s: x[0] if x.ndim == s.ndim + 1 else x, state.params,
                          self.setup.abstract.params)
    tokens = self._sampler(params, sampling.prompt_1xP, jax.random.key(sampling.seed))
    text = sampling.prompt + tokenizer.decode(np.asarray(jax.device_get(tokens))[0])
    self.writer.write_text(step, 'sample', '\n'.join('    ' + line for line in text.split('\n')))
    if self.is_main:
      paths.append_text(paths.join(self.workdir, 'samples.txt'), f'--- step {step} ---\n{text}\n')

  def save(self, step: int, state: PyTree) -> None:
    """The state and the input position (the step; the metrics since the last log point)."""
    c = self.config
    self.guards.saving(step)
    checkpointing.save(self.manager, step, self.setup.layout.to_global(state),
                       {'step': step, 'seed': c.seed, 'batch_size': c.batch_size,
                        'examples_seen': step * c.batch_size, 'skipped_updates': self.skipped,
                        'pending_metrics': metrics.pending_to_json(self.pending)},
                       metrics=self.eval_metrics if self._eval_step == step else None)
    self.guards.progressed(step)
