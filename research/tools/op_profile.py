"""Where a step's time goes: a `jax.profiler` trace of a few steps, summed by kind of XLA op.

`--config.benchmark.profile_steps=N` traces N steps into WORKDIR/profile (open it in TensorBoard's
profiler or Perfetto for the timeline) and prints the op kinds that took the most time, e.g.
matmul fusions against transposes and elementwise fusions. Op names lose their numeric suffix
(`copy_bitcast_fusion.15` -> `copy_bitcast_fusion`), so the 6 layers' copies of an op add up.
"""

from __future__ import annotations

import collections
import glob
import os
import re
from collections.abc import Callable

import jax

# Lines of the trace whose events are XLA ops: the CPU runtime's worker threads, or the
# accelerators' op lines. Events on them that only wrap others are left out.
OP_LINES = re.compile(r'^(tf_XLAEigen|XLA Ops$)')
WRAPPERS = ('ThunkExecutor', 'SlinkyThreadPool', 'end: ')


def trace(run: Callable[[], object], log_dir: str) -> tuple[object, str]:
  """Runs `run()` under the profiler: (its result, once ready; the .xplane.pb file written)."""
  os.makedirs(log_dir, exist_ok=True)
  before = set(glob.glob(os.path.join(log_dir, '**', '*.xplane.pb'), recursive=True))
  with jax.profiler.trace(log_dir):
    out = jax.block_until_ready(run())
  new = set(glob.glob(os.path.join(log_dir, '**', '*.xplane.pb'), recursive=True)) - before
  return out, max(new, key=os.path.getmtime)


def op_kind(name: str) -> str:
  return re.sub(r'[._]\d+$', '', name)


def breakdown(xplane_path: str, steps: int) -> list[dict]:
  """[{kind, ms_per_step, share}] over every op line (CPU threads summed), largest first."""
  data = jax.profiler.ProfileData.from_file(xplane_path)
  total_ns = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      if not OP_LINES.match(line.name):
        continue
      for event in line.events:
        if not event.name.startswith(WRAPPERS):
          total_ns[op_kind(event.name)] += event.duration_ns
  everything = sum(total_ns.values()) or 1
  return [{'kind': kind, 'ms_per_step': ns / 1e6 / steps, 'share': ns / everything}
          for kind, ns in total_ns.most_common()]


def format_breakdown(rows: list[dict], top: int = 10) -> str:
  shown = rows[:top]
  rest = sum(r['share'] for r in rows[top:])
  parts = [f'{r["kind"]} {100 * r["share"]:.0f}% ({r["ms_per_step"]:.1f} ms)' for r in shown]
  return ', '.join(parts) + (f', other {100 * rest:.0f}%' if rest else '')
