"""Where logged scalars go: WORKDIR/metrics.jsonl, TensorBoard events, and the console.

metrics.jsonl holds only values that are a function of config and seed (losses, accuracies,
norms, learning rate), so two runs of the same config compare line for line; timings go to
perf.jsonl and TensorBoard. Only process 0 writes.
"""

from __future__ import annotations

import io
import json
import math

import jax
import numpy as np
from absl import logging

from research import paths, wandb_log


class MetricWriter:

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.workdir = workdir
    self._tb = None
    if enabled:
      from tensorboardX import SummaryWriter  # Events readable by TensorBoard, no TF import.
      from tensorboardX.record_writer import register_writer_factory

      if not paths.is_local(workdir):  # Event files through epath, as every other file.
        register_writer_factory(paths.scheme(workdir), _EpathEvents())
      self._tb = SummaryWriter(paths.join(workdir, 'tensorboard'), flush_secs=10)
    # Optional third sink: only with config.wandb.project set (wandb itself is imported there).
    self._wandb = wandb_log.maybe_start(workdir) if enabled else None

  def write(self, step: int, split: str, scalars: dict[str, float], file: str = 'metrics.jsonl'):
    if not self.enabled:
      return
    scalars = {k: _jsonable(v) for k, v in scalars.items()}
    paths.append_text(paths.join(self.workdir, file),
                      json.dumps({'step': int(step), 'split': split, **scalars}) + '\n')
    for name, value in scalars.items():
      if isinstance(value, (int, float)):
        self._tb.add_scalar(f'{split}/{name}', value, step)
    if self._wandb is not None:
      self._wandb.log(step, split, scalars)

  def write_text(self, step: int, tag: str, text: str) -> None:
    if self.enabled:
      self._tb.add_text(tag, text, step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
    if self._wandb is not None:
      self._wandb.close()


class _EpathEvents:
  """tensorboardX's writer factory for a URI logdir: its files opened through etils.epath."""

  def open(self, path: str) -> paths.Upload:
    return paths.Upload(path, binary=True)

  def directory_check(self, path: str) -> None:
    paths.makedirs(path)


def _jsonable(v):
  v = float(np.asarray(v)) if np.ndim(v) == 0 else v
  return None if isinstance(v, float) and not math.isfinite(v) else v


def classification_report(confusion_CxC: np.ndarray) -> dict[str, float]:
  """Macro precision, recall and F1 from a confusion matrix (rows = true, cols = predicted).

  sklearn's `precision_recall_fscore_support(average='macro')` convention with its defaults
  (labels=None, zero_division='warn', which scores 0): the average runs over the classes present
  in the labels or the predictions; a class absent from both (an all-zero row and column) is left
  out rather than scored 0. A never-predicted class has precision 0 (0/0), a class never in the
  labels recall 0, and F1 = 2TP / (2TP + FP + FN) (0 when TP = 0). nan for an empty matrix.
  """
  confusion = np.asarray(confusion_CxC, dtype=np.float64)
  tp = np.diag(confusion)
  predicted, actual = confusion.sum(0), confusion.sum(1)
  present = (predicted > 0) | (actual > 0)
  if not present.any():
    return {'macro_precision': math.nan, 'macro_recall': math.nan, 'macro_f1': math.nan}
  tp, predicted, actual = tp[present], predicted[present], actual[present]
  precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
  recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
  f1 = 2 * tp / (predicted + actual)  # 2TP + FP + FN; > 0 for every present class.
  return {'macro_precision': float(precision.mean()), 'macro_recall': float(recall.mean()),
          'macro_f1': float(f1.mean())}


def save_confusion_png(confusion_CxC: np.ndarray, path: str, title: str) -> None:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  n = confusion_CxC.shape[0]
  fig, ax = plt.subplots(figsize=(1 + 0.5 * n, 1 + 0.5 * n), dpi=100)
  ax.imshow(confusion_CxC, cmap='Blues')
  if n <= 20:
    for i in range(n):
      for j in range(n):
        ax.text(j, i, int(confusion_CxC[i, j]), ha='center', va='center', fontsize=7)
  ax.set(xlabel='predicted', ylabel='true', title=title, xticks=range(n), yticks=range(n))
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format='png')  # Through paths: the workdir may be a URI.
  paths.get(path).write_bytes(png.getvalue())
  plt.close(fig)
  logging.info('Wrote %s', path)


# --- Train metrics between log points, and exact resume ------------------------------------


def host_metrics(pending: list[dict]) -> list[dict]:
  """Per-step metrics on the host (waits for them); replicated arrays of any process count."""
  return [{k: np.asarray(v.addressable_data(0) if isinstance(v, jax.Array) else v)
           for k, v in m.items()} for m in pending]


def nonfinite_report(pending: list[dict], step: int, last_good: int | None,
                     directory: str) -> str:
  """The diagnostic of a NaN/Inf stop: the first bad step, which metrics, and the norms."""
  host = host_metrics(pending)
  first = next(i for i, m in enumerate(host) if np.max(m['nonfinite']))
  bad_step = step - len(host) + 1 + first
  values = {k: float(np.mean(host[first][k])) for k in ('loss', 'grad_norm', 'param_norm')}
  which = [k for k, v in values.items() if not np.isfinite(v)] or ['loss/grad']
  good = (f'the last good checkpoint is step {last_good} in {directory} (intact)'
          if last_good is not None else f'no checkpoint was saved yet in {directory}')
  return (f'Non-finite {", ".join(which)} at step {bad_step} (loss={values["loss"]}, '
          f'grad_norm={values["grad_norm"]}, param_norm={values["param_norm"]}). Stopped at the '
          f'log point of step {step} without saving this state; {good}. Try a lower learning '
          'rate, config.optimizer.grad_clip_norm, or config.nan_policy="skip".')


def truncate_jsonl(path: str, max_step: int) -> int:
  """Drops lines with step > max_step (and a torn last line); returns how many were dropped.

  After a kill, metrics.jsonl can hold lines past the checkpoint that is restored; the resumed run
  writes those steps again, so dropping them makes the file equal an uninterrupted run's.
  """
  if not paths.exists(path):
    return 0
  lines = paths.read_text(path).splitlines(keepends=True)
  keep = []
  for line in lines:
    try:
      if json.loads(line)['step'] <= max_step:
        keep.append(line)
    except (ValueError, KeyError, TypeError):
      pass  # Torn by a kill mid-write.
  if len(keep) != len(lines):
    paths.write_text(path, ''.join(keep))
  return len(lines) - len(keep)


def pending_to_json(pending: list[dict]) -> dict:
  """Per-step train metrics since the last log point, as JSON for the checkpoint.

  A preemption checkpoint falls between log points; the resumed run must average the same steps
  at the next log point, so the values travel with the checkpoint, dtype included (floats
  round-trip exactly through JSON).
  """
  host = host_metrics(pending)
  if not host:
    return {}
  return {k: {'dtype': str(m.dtype), 'values': [float(np.mean(h[k])) for h in host]}
          for k, m in host[0].items()}


def pending_from_json(saved: dict | None) -> list[dict]:
  if not saved:
    return []
  n = len(next(iter(saved.values()))['values'])
  return [{k: np.asarray(v['values'][i], dtype=v['dtype']) for k, v in saved.items()}
          for i in range(n)]
