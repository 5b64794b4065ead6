"""Memory preflight: compile the train step ahead of time and report per-device memory.

  python launch.py --config=experiments/mnist_mlp.py --mode=dryrun --config.parallel.fsdp=8

Nothing is allocated on the devices: the state is `jax.eval_shape`'d, the step is lowered from
ShapeDtypeStructs carrying the real shardings, and XLA's `memory_analysis()` of the compiled
executable gives the temporaries. The only data touched is the dataset's metadata and one batch
on the host, for the input shapes: the largest batch training can see (`largest_train_batch`;
for SST-2's length buckets the widest bucket, not step 0's), so the estimate is the run's peak.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from research import build, config_checks, data, hf, paths

PyTree = Any


def per_device_bytes(abstract: PyTree, shardings: PyTree) -> int:
  """Bytes one device holds of `abstract` under `shardings` (its largest shard of each leaf)."""
  total = 0
  for leaf, sharding in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings), strict=True):
    total += math.prod(sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
  return total


def _abstract_batch(dataset: data.Dataset, global_batch: int) -> dict:
  """Global-batch ShapeDtypeStructs of the largest host batch (this process's rows) any step has."""
  local = dataset.largest_train_batch(0)
  return {k: jax.ShapeDtypeStruct((global_batch,) + v.shape[1:], v.dtype) for k, v in local.items()}


def compile_train_step(config: ml_collections.ConfigDict, dataset: data.Dataset):
  """(compiled step, layout, abstract state, abstract global batch), as train.py builds them;
  no allocation."""
  setup = build.build(config, dataset)
  layout, abstract = setup.layout, setup.abstract
  batch = _abstract_batch(dataset, config.batch_size)
  p_train, _ = setup.compiled_steps()
  state, batch = layout.abstract_step_args(abstract, batch)
  compiled = p_train.lower(state, batch).compile()
  return compiled, layout, abstract, batch


def memory_report(config: ml_collections.ConfigDict, dataset: data.Dataset) -> dict:
  """Per-device bytes: parameters, optimizer state, XLA temporaries (activations) and the peak."""
  t0 = time.time()
  compiled, layout, abstract, batch = compile_train_step(config, dataset)
  shardings = layout.device_shardings(abstract)
  mem = compiled.memory_analysis()
  params = per_device_bytes(abstract.params, shardings.params)
  opt_state = per_device_bytes(abstract.opt_state, shardings.opt_state)
  # Arguments (state + batch) and outputs; the donated state is aliased, so counted once.
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
           + mem.temp_size_in_bytes)
  return {
      'strategy': layout.strategy, 'mesh': dict(layout.mesh.shape),
      'devices': jax.device_count(), 'platform': jax.devices()[0].platform,
      'num_params': int(sum(x.size for x in jax.tree.leaves(abstract.params))),
      'global_batch': config.batch_size,
      'input_shapes': {k: list(v.shape) for k, v in batch.items()},
      'batch_shapes_vary': dataset.widest_train_batch is not None,
      'per_device_bytes': {
          'params': params, 'optimizer_state': opt_state,
          'batch': mem.argument_size_in_bytes - per_device_bytes(abstract, shardings)
                   if layout.strategy == 'jit' else None,
          'activations_temp': mem.temp_size_in_bytes,
          'arguments': mem.argument_size_in_bytes, 'outputs': mem.output_size_in_bytes,
          'aliased': mem.alias_size_in_bytes, 'total': total},
      'compile_seconds': time.time() - t0,
  }


def format_report(report: dict) -> str:
  mib = lambda b: 'n/a' if b is None else f'{b / 2**20:,.1f} MiB'
  mesh = ' x '.join(f'{k}={v}' for k, v in report['mesh'].items())
  b = report['per_device_bytes']
  lines = [f'dryrun: {report["num_params"]:,} parameters; strategy {report["strategy"]}, '
           f'mesh {mesh} on {report["devices"]} {report["platform"]} devices; global batch '
           f'{report["global_batch"]} ({report["input_shapes"]}'
           + ('; the largest of the shapes training draws' if report['batch_shapes_vary'] else '')
           + f'); compiled in '
           f'{report["compile_seconds"]:.1f}s',
           'per device:',
           f'  parameters        {mib(b["params"])}',
           f'  optimizer state   {mib(b["optimizer_state"])}',
           f'  activations/temp  {mib(b["activations_temp"])}',
           f'  total (peak est.) {mib(b["total"])}  = arguments {mib(b["arguments"])} + outputs '
           f'{mib(b["outputs"])} - donated {mib(b["aliased"])} + temp']
  return '\n'.join(lines)


def dryrun(config: ml_collections.ConfigDict, workdir: str | None = None) -> dict:
  """Checks the config, compiles the step for the current devices, prints and returns the report."""
  config_checks.check_train_config(config)
  config = hf.configure(config)  # init_from=hf:PATH: the architecture its config.json gives.
  dataset = data.get_dataset(config, jax.process_index(), jax.process_count())
  report = memory_report(config, dataset)
  if jax.process_index() == 0:
    print(format_report(report), flush=True)
    if workdir:
      paths.makedirs(workdir)  # A local folder or a URI (research/paths.py).
      paths.write_text(paths.join(workdir, 'dryrun.json'),
                       json.dumps(report, indent=2, default=lambda x: np.asarray(x).tolist()))
  return report
