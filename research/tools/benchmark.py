r"""--mode=benchmark: how fast one experiment config trains, and how close to the hardware's peak.

  python launch.py --config=experiments/shakespeare_char.py:cpu --workdir=/tmp/bench \
      --mode=benchmark --config.data.data_dir=/tmp/tfds

It builds the train step exactly as the train loop does (data, model, optimizer, layout,
`parallel.compile_steps`' jitted/pmapped step with the state donated), compiles it ahead of time,
and measures:
  compile      trace + lower, and XLA compile, in seconds.
  bare step    `benchmark.timed_steps` steps after `benchmark.warmup_steps` untimed ones, on
               batches already on the devices, timed from dispatch to `block_until_ready`; run
               before and again after the full loop (below), and averaged. Data whose batches
               change shape from step to step (SST-2's length buckets) is timed at the largest
               shape training can see (`Dataset.largest_train_batch`), the one the table prints.
  FLOPs        model FLOPs per step counted analytically (research/flops.py states the formulas),
               next to what XLA's cost model counts in the compiled program.
  MFU          achieved model FLOP/s over the devices' peak: `benchmark.peak_flops` if set, else
               the dense bf16 table by device kind (GPU/TPU), else (CPU) a large matmul of the
               compute dtype timed in this same run, so the peak sees the same machine load.
               On CPU also in CPU time (the step's and the matmul's CPU seconds of this
               process), which other processes sharing the cores do not inflate.
  memory       XLA's per-device peak estimate from `compiled.memory_analysis()` (and the
               allocator's peak where the backend reports one).
  time by op   with `benchmark.profile_steps` > 0: a profiler trace of that many steps
               (WORKDIR/profile) and the time by kind of XLA op (research/op_profile.py).
  input        host time to make and copy one batch (the loop prefetches it on a thread), and the
               share of loop time the loop spent waiting for it.
  full loop    `research.train.train_and_evaluate` itself, in WORKDIR/loop_run (deleted after),
               for `benchmark.loop_log_intervals` log intervals after the first (which compiles);
               its steps/s against the bare step's is the loop's overhead (logging, metrics,
               input; on CPU also in CPU time). Eval and checkpoints run only at its last step,
               outside the timed intervals. With batches of varying shape the loop runs on the
               real mix of widths (and compiles each new one), so no overhead is derived.
One table goes to stdout and everything to WORKDIR/benchmark.json.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import shutil
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from research import build, config_checks, data, hf, host, parallel
from research.errors import ConfigError
from research.tools import flops, op_profile
from research.tools.peak import CPU_MATMUL_SIZES, matmul_peak, peak_flops
from research.train import train_and_evaluate

PyTree = Any


def check_benchmark_config(config: ml_collections.ConfigDict) -> None:
  config_checks.check_positive(config, 'benchmark.timed_steps')
  for key in ('warmup_steps', 'loop_log_intervals', 'profile_steps'):
    value = config.benchmark.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
      raise ConfigError(f'config.benchmark.{key} must be an integer >= 0, got {value!r}.')
  peak = config.benchmark.peak_flops
  if not isinstance(peak, (int, float)) or peak < 0:
    raise ConfigError(f'config.benchmark.peak_flops must be a FLOP/s number >= 0 (0 = the device '
                      f'table or, on CPU, a matmul measured in the run), got {peak!r}.')


def build_step(config: ml_collections.ConfigDict, dataset: data.Dataset):
  """(jitted or pmapped train step, fresh state in its layout, layout, number of parameters), as
  train.py builds them."""
  setup = build.build(config, dataset)
  p_train, _ = setup.compiled_steps()
  return p_train, setup.layout.to_strategy(setup.fresh_state()), setup.layout, setup.num_params


def compile_step(p_train, state: PyTree, batch: dict):
  """AOT-compiles the step for these arguments: (compiled, trace+lower seconds, XLA seconds)."""
  t0 = time.perf_counter()
  lowered = p_train.lower(state, batch)  # A jitted step lowers with the layout's mesh set.
  t1 = time.perf_counter()
  compiled = lowered.compile()
  return compiled, t1 - t0, time.perf_counter() - t1


def run_steps(step, state: PyTree, batches: list[dict], num_steps: int) -> PyTree:
  """`num_steps` steps, returned only once they have finished on the devices."""
  block_each = parallel.one_program_in_flight()  # Fake CPU devices deadlock if queued ahead.
  metrics = None
  for i in range(num_steps):
    state, metrics = step(state, batches[i % len(batches)])
    if block_each:
      jax.block_until_ready(metrics)
  jax.block_until_ready((state, metrics))
  return state


def time_input(dataset: data.Dataset, layout: parallel.Layout, num_steps: int = 5) -> float:
  """Seconds to make one batch on the host and copy it to the devices (done serially here)."""
  t0 = time.perf_counter()
  for s in range(num_steps):
    jax.block_until_ready(layout.put_batch(dataset.train_batch(s)))
  return (time.perf_counter() - t0) / num_steps


def memory(compiled) -> dict:
  """Per-device bytes of the compiled step (XLA's estimate) and the allocator's peak, if known."""
  out = {}
  try:
    mem = compiled.memory_analysis()
  except NotImplementedError:
    mem = None
  if mem is not None:
    out.update(
        arguments=mem.argument_size_in_bytes, outputs=mem.output_size_in_bytes,
        donated=mem.alias_size_in_bytes, temp=mem.temp_size_in_bytes,
        peak_estimate=(mem.argument_size_in_bytes + mem.output_size_in_bytes
                       - mem.alias_size_in_bytes + mem.temp_size_in_bytes))
  stats = jax.local_devices()[0].memory_stats() or {}  # GPU/TPU allocators; None on CPU.
  out['allocator_peak'] = stats.get('peak_bytes_in_use')
  return out


def time_loop(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  """Steps/s of train_and_evaluate's own loop over the timed log intervals, and its input wait."""
  intervals = config.benchmark.loop_log_intervals
  if not intervals:
    return None
  loop_config = config.copy_and_resolve_references()
  total = config.log_every_steps * (intervals + 1)
  loop_config.num_train_steps = total
  loop_config.eval_every_steps = loop_config.checkpoint_every_steps = total
  loop_config.progress_bar = False
  loop_config.wandb.project = ''
  if 'sample' in loop_config:
    loop_config.sample.num_tokens = 0
  sub = os.path.join(workdir, 'loop_run')
  shutil.rmtree(sub, ignore_errors=True)
  try:
    train_and_evaluate(loop_config, sub)
    with open(os.path.join(sub, 'perf.jsonl')) as f:
      lines = [json.loads(line) for line in f]
  finally:
    if jax.process_index() == 0:
      shutil.rmtree(sub, ignore_errors=True)
  timed = lines[1:]  # The first interval includes compiling the step.
  seconds = [config.log_every_steps / line['steps_per_sec'] for line in timed]
  return {'steps': config.log_every_steps * len(timed), 'seconds': sum(seconds),
          'steps_per_sec': config.log_every_steps * len(timed) / sum(seconds),
          'input_wait_frac': sum(w['input_wait_frac'] * s for w, s in zip(timed, seconds,
                                                                          strict=True))
                             / sum(seconds),
          'cpu_seconds_per_step': (sum(line['cpu_seconds_per_step'] for line in timed) / len(timed)
                                   if all('cpu_seconds_per_step' in line for line in timed)
                                   else None),
          'log_every_steps': config.log_every_steps}


def benchmark(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Measures the train step (and loop); prints the table and writes WORKDIR/benchmark.json."""
  config_checks.check_train_config(config)
  check_benchmark_config(config)
  config_checks.check_workdir(workdir)
  config = hf.configure(config)  # init_from=hf:PATH: the architecture its config.json gives.
  load_start = os.getloadavg()[0]
  dataset = data.get_dataset(config, jax.process_index(), jax.process_count(), workdir=workdir)
  p_train, state, layout, num_params = build_step(config, dataset)
  bench = config.benchmark
  # One shape for the compiled step: the largest any step can have (SST-2: the widest bucket).
  host_batches = [dataset.largest_train_batch(s) for s in range(min(bench.timed_steps, 4))]
  batches = [layout.put_batch(b) for b in host_batches]
  compiled, lower_s, compile_s = compile_step(p_train, state, batches[0])
  peak, peak_source, peak_per_cpu_second = peak_flops(config)
  state = run_steps(compiled, state, batches, bench.warmup_steps)
  runs = []  # (wall, CPU) seconds per step of each timed run.
  usage = []  # (user CPU s, system CPU s, minor page faults) per step of each timed run.

  def timed_run(state):
    t0, c0, r0 = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
    state = run_steps(compiled, state, batches, bench.timed_steps)
    runs.append(((time.perf_counter() - t0) / bench.timed_steps,
                 (time.process_time() - c0) / bench.timed_steps))
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    usage.append(tuple((getattr(r1, k) - getattr(r0, k)) / bench.timed_steps
                       for k in ('ru_utime', 'ru_stime', 'ru_minflt')))
    return state

  state = timed_run(state)
  input_s = time_input(dataset, layout)
  varying = dataset.widest_train_batch is not None
  loop = time_loop(config, workdir)
  if loop:  # Bare steps before and after the loop, so a load that drifts hits both sides alike.
    state = timed_run(state)
  ops = None
  if bench.get('profile_steps', 0):
    log_dir = os.path.join(workdir, 'profile')
    state, xplane = op_profile.trace(
        functools.partial(run_steps, compiled, state, batches, bench.profile_steps), log_dir)
    ops = {'trace_dir': log_dir, 'by_kind': op_profile.breakdown(xplane, bench.profile_steps)}
  del state
  step_s, cpu_step_s = (float(np.mean(x)) for x in zip(*runs, strict=True))
  user_s, sys_s, faults = (float(np.mean(x)) for x in zip(*usage, strict=True))
  if peak_per_cpu_second:  # CPU: measured once more after the steps, the best of both kept.
    again = matmul_peak(config.model.get('dtype', 'float32'), CPU_MATMUL_SIZES)
    peak, peak_per_cpu_second = max(peak, again[0]), max(peak_per_cpu_second, again[1])

  shapes = {k: list(v.shape) for k, v in host_batches[0].items()}
  global_batch = {k: jax.ShapeDtypeStruct((config.batch_size,) + v.shape[1:], v.dtype)
                  for k, v in host_batches[0].items()}
  counted = flops.train_step_flops(config.model, dataset.meta, global_batch)
  model_flops, formula = counted if counted else (None, 'no formula for this model')
  xla = flops.xla_flops(compiled)
  # The compiled program is one device's: pmap's runs once per device, and jit's SPMD program is
  # partitioned per device too (a replicated computation is counted on each).
  xla_total = xla * jax.device_count() if xla is not None else None
  tokens = (config.batch_size * dataset.meta.block_size
            if dataset.meta.task == 'lm' else None)
  achieved = model_flops / step_s if model_flops else None
  report = {
      'model': config.model.name, 'dataset': config.data.name,
      'num_params': int(num_params),
      'global_batch': config.batch_size, 'grad_accum_steps': config.get('grad_accum_steps', 1),
      'host_batch_shapes': shapes, 'tokens_per_step': tokens,
      # True: steps draw batches of several shapes; the bare step is timed at the largest.
      'batch_shapes_vary': varying,
      'dtype': config.model.get('dtype', 'float32'),
      'param_dtype': config.model.get('param_dtype', 'float32'),
      'platform': jax.devices()[0].platform, 'device_kind': jax.devices()[0].device_kind,
      'devices': jax.device_count(), 'processes': jax.process_count(),
      'strategy': layout.strategy, 'mesh': dict(layout.mesh.shape),
      'lower_seconds': lower_s, 'compile_seconds': compile_s,
      'warmup_steps': bench.warmup_steps, 'timed_steps': bench.timed_steps,
      'step_seconds': step_s, 'steps_per_sec': 1.0 / step_s,
      'step_seconds_each_run': [wall for wall, _ in runs],
      'examples_per_sec': config.batch_size / step_s,
      'tokens_per_sec': tokens / step_s if tokens else None,
      'model_flops_per_step': model_flops, 'flops_formula': formula,
      'xla_flops_per_step': xla_total,
      'model_over_xla_flops': model_flops / xla_total if model_flops and xla_total else None,
      # XLA's cost analysis counts a while loop's body once, whatever its trip count.
      'xla_counts_one_loop_iteration': bool(config.model.get('scan_layers', False)
                                            or config.get('grad_accum_steps', 1) > 1),
      'achieved_flops_per_sec': achieved,
      'peak_flops_per_sec': peak, 'peak_source': peak_source,
      'mfu': achieved / peak if achieved and peak else None,
      # CPU only: the same ratio in CPU time (this process's, all threads), which other processes
      # on a shared host do not inflate as they do wall time.
      'cpu_seconds_per_step': cpu_step_s if peak_per_cpu_second else None,
      # The bare step's CPU time split (user: compute and spinning; system: the kernel, e.g.
      # page faults) and its minor page faults, per step, this process (all threads).
      'user_seconds_per_step': user_s, 'system_seconds_per_step': sys_s,
      'minor_page_faults_per_step': faults,
      'malloc_tuned': host.malloc_tuned(),
      'threads': len(os.listdir('/proc/self/task')) if os.path.isdir('/proc/self/task') else None,
      'peak_flops_per_cpu_second': peak_per_cpu_second,
      'mfu_cpu_time': (model_flops / cpu_step_s / peak_per_cpu_second
                       if model_flops and peak_per_cpu_second else None),
      'memory_per_device_bytes': memory(compiled),
      'input_seconds_per_batch': input_s, 'loop': loop,
      # Not with varying shapes: the loop's batches are mostly narrower than the timed one.
      'loop_overhead_frac': 1.0 - loop['steps_per_sec'] * step_s if loop and not varying else None,
      # CPU: the loop's extra CPU time per step over the bare step's (logging, metrics, input).
      'loop_overhead_cpu_frac': (loop['cpu_seconds_per_step'] / cpu_step_s - 1.0
                                 if loop and loop['cpu_seconds_per_step'] and peak_per_cpu_second
                                 and not varying else None),
      'load_average_1min': {'start': load_start, 'end': os.getloadavg()[0]},
      'op_profile': ops,
      'jax_version': jax.__version__,
  }
  if jax.process_index() == 0:
    print(format_report(report), flush=True)
    with open(os.path.join(workdir, 'benchmark.json'), 'w') as f:
      json.dump(report, f, indent=2, default=lambda x: np.asarray(x).tolist())
  return report


def _si(x: float | None, unit: str) -> str:
  if x is None:
    return 'n/a'
  for scale, prefix in ((1e15, 'P'), (1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
    if abs(x) >= scale:
      return f'{x / scale:.3g} {prefix}{unit}'
  return f'{x:.3g} {unit}'


def format_report(r: dict) -> str:
  mib = lambda b: 'n/a' if b is None else f'{b / 2**20:,.1f} MiB'
  pct = lambda x: 'n/a' if x is None else f'{100 * x:.1f}%'
  mem = r['memory_per_device_bytes']
  mesh = ' x '.join(f'{k}={v}' for k, v in r['mesh'].items())
  rate = lambda x: f'{x:,.0f}' if x >= 100 else f'{x:.3g}'
  speed = f'{r["steps_per_sec"]:.3g} steps/s, {rate(r["examples_per_sec"])} examples/s'
  if r['tokens_per_sec']:
    speed += f', {rate(r["tokens_per_sec"])} tokens/s'
  rows = [
      ('compile', f'{r["lower_seconds"] + r["compile_seconds"]:.2f} s (trace + lower '
                  f'{r["lower_seconds"]:.2f} s, XLA {r["compile_seconds"]:.2f} s)'),
      ('step (bare)', f'{1e3 * r["step_seconds"]:.2f} ms: {speed} ({r["timed_steps"]} timed '
                      f'steps after {r["warmup_steps"]} warm-up'
                      + (', before and after the loop: ' + ' / '.join(
                          f'{1e3 * s:.2f}' for s in r['step_seconds_each_run']) + ' ms)'
                         if len(r['step_seconds_each_run']) > 1 else ')')),
      ('model FLOPs/step', f'{_si(r["model_flops_per_step"], "FLOP")}: {r["flops_formula"]}'),
      ('XLA FLOPs/step', f'{_si(r["xla_flops_per_step"], "FLOP")} (cost analysis, all ops and '
                         f'recomputation; model/XLA = '
                         + (f'{r["model_over_xla_flops"]:.2f})' if r['model_over_xla_flops']
                            else 'n/a)')
                         + ('; scanned layers / micro-batches are counted once, so it is low'
                            if r['xla_counts_one_loop_iteration'] else '')),
      ('achieved', f'{_si(r["achieved_flops_per_sec"], "FLOP/s")} (model FLOPs)'),
      ('peak', f'{_si(r["peak_flops_per_sec"], "FLOP/s")}: {r["peak_source"]}'),
      ('MFU', pct(r['mfu']) + (
          f' (in CPU time: {pct(r["mfu_cpu_time"])}; {r["cpu_seconds_per_step"]:.3g} CPU-s/step, '
          f'peak {_si(r["peak_flops_per_cpu_second"], "FLOP")} per CPU-s)'
          if r['mfu_cpu_time'] else '')),
      ('CPU time', f'{1e3 * r["user_seconds_per_step"]:.1f} ms user + '
                   f'{1e3 * r["system_seconds_per_step"]:.1f} ms system per step, '
                   f'{r["minor_page_faults_per_step"]:,.0f} minor page faults per step '
                   f'(this process, all threads: {r["threads"] or "n/a"}; malloc '
                   + ('tuned, research/host.py)' if r['malloc_tuned'] else
                      "glibc's defaults)")),
      ('memory/device', f'{mib(mem.get("peak_estimate"))} XLA peak estimate (arguments '
                        f'{mib(mem.get("arguments"))} + outputs {mib(mem.get("outputs"))} - '
                        f'donated {mib(mem.get("donated"))} + temp {mib(mem.get("temp"))}); '
                        f'allocator peak {mib(mem.get("allocator_peak"))}'),
      ('input', f'{1e3 * r["input_seconds_per_batch"]:.2f} ms/batch to make and copy '
                '(prefetched on a thread in the loop)'),
  ]
  loop = r['loop']
  if loop:
    overhead = (f'overhead {pct(r["loop_overhead_frac"])} vs the bare step'
                + (f' ({pct(r["loop_overhead_cpu_frac"])} in CPU time)'
                   if r['loop_overhead_cpu_frac'] is not None else '')
                if not r['batch_shapes_vary'] else
                'on the mix of batch widths training draws (each new one compiled), so not '
                'compared with the bare step at the widest')
    rows.append(('full loop', f'{loop["steps_per_sec"]:.3g} steps/s over {loop["steps"]} steps at '
                              f'log_every_steps={loop["log_every_steps"]}: {overhead}'
                              f'; waited for input {pct(loop["input_wait_frac"])} of loop time'))
  else:
    rows.append(('full loop', 'not run (config.benchmark.loop_log_intervals=0)'))
  if r.get('op_profile'):
    rows.append(('time by op', f'{op_profile.format_breakdown(r["op_profile"]["by_kind"])} '
                            f'(trace in {r["op_profile"]["trace_dir"]})'))
  load = r['load_average_1min']
  rows.append(('load average', f'{load["start"]:.2f} at start, {load["end"]:.2f} at end (1 min)'))
  shape = r['host_batch_shapes'].get('inputs')
  if r['batch_shapes_vary']:
    shape = f'{shape} (the largest of the shapes training draws; timed at it)'
  head = (f'benchmark: {r["model"]} on {r["dataset"]}, {r["num_params"]:,} params, global batch '
          f'{r["global_batch"]} {shape}, grad_accum '
          f'{r["grad_accum_steps"]}, {r["dtype"]} compute / {r["param_dtype"]} params; '
          f'{r["devices"]} x {r["device_kind"]} ({r["platform"]}), {r["strategy"]} mesh {mesh}')
  width = max(len(k) for k, _ in rows)
  return '\n'.join([head] + [f'  {k:<{width}}  {v}' for k, v in rows])
