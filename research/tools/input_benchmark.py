r"""How fast the input pipeline alone makes training batches: in memory vs streamed through grain.

  python -m research.tools.input_benchmark --config=experiments/mnist_mlp.py \
      --config.data.data_dir=/tmp/tfds --workers=0,1,2 --steps=200

For each path (config.data.source='memory', then 'stream' with each worker count) it makes the
dataset, asks for train batches 0, 1, 2, ... as the loop's Prefetcher does (no model, no
devices), and prints examples/s after the first `--warmup` batches (which include starting the
worker processes), and the CPU time spent per 1000 examples by this process and its workers
(which other jobs on the machine do not inflate, unlike examples/s). Printed, never asserted.
The loop's own input-wait share comes from `--mode=benchmark` (research/tools/benchmark.py).
"""

from __future__ import annotations

import multiprocessing
import os
import time

from absl import app, flags
from ml_collections import config_flags

from research import data

config_flags.DEFINE_config_file('config', None, 'Experiment config file (FILE or FILE:PRESET).')
flags.DEFINE_string('workers', '0,1,2', 'Streamed runs: grain worker counts, comma-separated.')
flags.DEFINE_integer('steps', 200, 'Timed batches per path.')
flags.DEFINE_integer('warmup', 10, 'Untimed batches first (worker start-up, caches).')


def cpu_seconds() -> float:
  """CPU time of this process and its live children (grain's workers), from /proc."""
  total = time.process_time()
  for child in multiprocessing.active_children():
    try:
      with open(f'/proc/{child.pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
      total += (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')  # utime, stime.
    except (FileNotFoundError, IndexError):
      pass
  return total


def measure(dataset: data.Dataset, batch_size: int, steps: int,
            warmup: int) -> tuple[float, float]:
  """Batches 0..warmup+steps-1 in order: (examples/s, CPU-s per 1000 examples) of the last
  `steps` of them."""
  for step in range(warmup):
    dataset.train_batch(step)
  t0, cpu0 = time.perf_counter(), cpu_seconds()
  for step in range(warmup, warmup + steps):
    dataset.train_batch(step)
  examples = steps * batch_size
  return examples / (time.perf_counter() - t0), (cpu_seconds() - cpu0) / examples * 1000


def main(argv) -> None:
  del argv
  config = flags.FLAGS.config
  runs = [('memory', 0)] + [('stream', int(w)) for w in flags.FLAGS.workers.split(',') if w]
  print(f'{config.data.name}, batch {config.batch_size}, {os.cpu_count()} CPUs, load average '
        f'{os.getloadavg()[0]:.2f} at the start')
  for source, workers in runs:
    config.data.source, config.data.workers = source, workers
    dataset = data.get_dataset(config)
    rate, cpu = measure(dataset, config.batch_size, flags.FLAGS.steps, flags.FLAGS.warmup)
    if hasattr(dataset.train_batch, 'close'):
      dataset.train_batch.close()
    label = 'in memory' if source == 'memory' else f'streamed, {workers} workers'
    print(f'  {label:22s} {rate:10,.0f} examples/s  {cpu:7.3f} CPU-s per 1000 examples  (load '
          f'average {os.getloadavg()[0]:.2f})', flush=True)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
