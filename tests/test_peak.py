"""research/tools/peak.py: the peak override is per device; on CPU the peak is a matmul timed in
this run, in FLOP/s and in FLOP per CPU-second. Nothing here asserts speed."""

import jax

import experiments.shakespeare_char as shakespeare_char
from research.tools import peak


def test_peak_override_is_per_device():
  config = shakespeare_char.get_config('tiny')
  config.benchmark.peak_flops = 1e12
  flops, source, per_cpu_second = peak.peak_flops(config)
  assert flops == 1e12 * jax.device_count() and 'config.benchmark.peak_flops' in source
  assert per_cpu_second is None


def test_cpu_peak_is_a_matmul_measured_in_this_run():
  config = shakespeare_char.get_config('tiny')
  flops, source, per_cpu_second = peak.peak_flops(config)
  assert 'measured in this run' in source and flops > 0 and per_cpu_second > 0
