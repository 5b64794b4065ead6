r"""How fast the input pipeline alone makes training batches: in memory vs streamed through grain.

  python -m research.tools.input_benchmark --config=experiments/mnist_mlp.py \
      --config.data.data_dir=/tmp/tfds --workers=0,1,2 --steps=200

For each path (config.data.source='memory', then 'stream' with each worker count) it makes the
dataset, asks for train batches 0, 1, 2, ... as the loop's Prefetcher does (no model, no
devices), and prints examples/s after the first `--warmup` batches (which include starting the
worker processes). Printed, never asserted: the figures depend on the machine and its load.
The loop's own input-wait share comes from `--mode=benchmark` (research/tools/benchmark.py).
"""

from __future__ import annotations

import os
import time

from absl import app, flags
from ml_collections import config_flags

from research import data

config_flags.DEFINE_config_file('config', None, 'Experiment config file (FILE or FILE:PRESET).')
flags.DEFINE_string('workers', '0,1,2', 'Streamed runs: grain worker counts, comma-separated.')
flags.DEFINE_integer('steps', 200, 'Timed batches per path.')
flags.DEFINE_integer('warmup', 10, 'Untimed batches first (worker start-up, caches).')


def examples_per_sec(dataset: data.Dataset, batch_size: int, steps: int, warmup: int) -> float:
  """Batches 0..warmup+steps-1 in order; examples/s over the last `steps` of them."""
  for step in range(warmup):
    dataset.train_batch(step)
  t0 = time.perf_counter()
  for step in range(warmup, warmup + steps):
    dataset.train_batch(step)
  return steps * batch_size / (time.perf_counter() - t0)


def main(argv) -> None:
  del argv
  config = flags.FLAGS.config
  runs = [('memory', 0)] + [('stream', int(w)) for w in flags.FLAGS.workers.split(',') if w]
  print(f'{config.data.name}, batch {config.batch_size}, {os.cpu_count()} CPUs, load average '
        f'{os.getloadavg()[0]:.2f} at the start')
  for source, workers in runs:
    config.data.source, config.data.workers = source, workers
    dataset = data.get_dataset(config)
    rate = examples_per_sec(dataset, config.batch_size, flags.FLAGS.steps, flags.FLAGS.warmup)
    if hasattr(dataset.train_batch, 'close'):
      dataset.train_batch.close()
    label = 'in memory' if source == 'memory' else f'streamed, {workers} workers'
    print(f'  {label:22s} {rate:10,.0f} examples/s  ({rate / config.batch_size:,.1f} batches/s;'
          f' load average {os.getloadavg()[0]:.2f})', flush=True)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
