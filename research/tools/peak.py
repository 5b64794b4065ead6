"""The devices' peak FLOP/s that MFU divides by: config.benchmark.peak_flops, else the data-sheet
table by device kind (GPU/TPU, research/tools/flops.py), else a matmul timed in this run (CPU,
and accelerators not in the table), so the peak sees the same machine load as the step."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections

from research.tools import flops

CPU_MATMUL_SIZES = (1024, 2048)  # The best of them reaches the BLAS peak on a few cores, quickly.
ACCELERATOR_MATMUL_SIZE = 8192


def matmul_peak(dtype: str, sizes: tuple[int, ...], repeats: int = 4) -> tuple[float, float]:
  """Best (FLOP/s, FLOP per CPU-second of this process) of jitted size^3 matmuls in `dtype` on
  the first local device. CPU time does not grow when other processes share the cores."""
  device = jax.local_devices()[0]
  matmul = jax.jit(jnp.matmul)
  best_wall = best_cpu = 0.0
  for size in sizes:
    keys = jax.random.split(jax.random.key(0))
    a, b = (jax.device_put(jax.random.normal(k, (size, size), dtype), device) for k in keys)
    matmul(a, b).block_until_ready()
    for _ in range(repeats):
      t0, c0 = time.perf_counter(), time.process_time()
      matmul(a, b).block_until_ready()
      wall, cpu = time.perf_counter() - t0, time.process_time() - c0
      best_wall = max(best_wall, 2.0 * size**3 / wall)
      best_cpu = max(best_cpu, 2.0 * size**3 / max(cpu, 1e-9))
  return best_wall, best_cpu


def peak_flops(config: ml_collections.ConfigDict) -> tuple[float | None, str, float | None]:
  """(peak FLOP/s of all devices together, where the figure comes from, and on CPU the peak FLOP
  per CPU-second of a matmul measured in this run)."""
  devices = jax.devices()
  kind, dtype = devices[0].device_kind, config.model.get('dtype', 'float32')
  if config.benchmark.peak_flops:
    return config.benchmark.peak_flops * len(devices), (
        f'config.benchmark.peak_flops {config.benchmark.peak_flops:.4g} x {len(devices)} '
        'devices'), None
  if devices[0].platform == 'cpu':
    # Fake CPU devices share the host's cores, and one matmul already uses them all: the
    # measured figure is the whole host's peak, whatever the device count.
    peak, per_cpu_second = matmul_peak(dtype, CPU_MATMUL_SIZES)
    sizes = '/'.join(map(str, CPU_MATMUL_SIZES))
    return peak, f'best {dtype} {sizes}^3 matmul measured in this run (whole host)', per_cpu_second
  per_device = flops.table_peak_flops(kind)
  if per_device is not None:
    return per_device * len(devices), (f'dense bf16 table peak for {kind!r}: {per_device:.4g} x '
                                       f'{len(devices)} devices'), None
  measured, _ = matmul_peak(dtype, (ACCELERATOR_MATMUL_SIZE,))
  return measured * len(devices), (
      f'{kind!r} is not in research/flops.py PEAK_BF16_FLOPS: a {dtype} '
      f'{ACCELERATOR_MATMUL_SIZE}^3 matmul measured here x {len(devices)} devices (set '
      'config.benchmark.peak_flops for the data-sheet figure)'), None
