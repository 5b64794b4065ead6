"""--mode=benchmark: FLOP formulas against the real models and XLA, the peak table, gradient
accumulation equal to one big-batch step, and the benchmark's report. Nothing here asserts speed."""

import functools
import json
import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
import pytest
from conftest import run_launch

import experiments.gpt2_small as gpt2_small
import experiments.shakespeare_char as shakespeare_char
from research import benchmark, flops, models, parallel
from research.config_checks import ConfigError, check_train_config
from research.train_step import eval_step, init_state, train_step


@pytest.mark.parametrize('kind, peak', [
    ('NVIDIA H100 80GB HBM3', 989e12), ('NVIDIA H100 PCIe', 756e12), ('NVIDIA H200', 989e12),
    ('NVIDIA A100-SXM4-80GB', 312e12), ('TPU v4', 275e12), ('TPU v5 lite', 197e12),
    ('TPU v5p', 459e12), ('TPU v6 lite', 918e12), ('cpu', None), ('NVIDIA GeForce GTX 1080', None)])
def test_peak_table_by_device_kind(kind, peak):
  assert flops.table_peak_flops(kind) == peak


def test_peak_override_is_per_device():
  config = shakespeare_char.get_config('tiny')
  config.benchmark.peak_flops = 1e12
  peak, source, per_cpu_second = benchmark.peak_flops(config)
  assert peak == 1e12 * jax.device_count() and 'config.benchmark.peak_flops' in source
  assert per_cpu_second is None


def matmul_weights(params) -> int:
  """Sizes of the weights that multiply activations, read off the real parameter tree: every
  kernel, plus the token table (tied: it is the output head); not the position table."""
  total = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    name = jax.tree_util.keystr(path)
    if 'kernel' in name or 'token_embed' in name:
      total += leaf.size
  return total


@pytest.mark.parametrize('overrides', [{}, {'num_kv_heads': 1, 'mlp': 'swiglu', 'd_ff': 48}])
def test_transformer_formula_counts_the_models_matmul_weights(overrides):
  cfg = ml_collections.ConfigDict(dict(name='transformer_lm', num_layers=3, d_model=32,
                                       num_heads=4, num_kv_heads=0, d_ff=0, max_len=16))
  cfg.update(overrides)
  model = models.get_model(cfg, {'vocab_size': 50, 'block_size': 16})
  params = jax.eval_shape(lambda: nn.unbox(model.init(
      jax.random.key(0), np.zeros((1, 16), np.int32))['params']))
  n = flops.transformer_matmul_params(
      num_layers=3, d_model=32, num_heads=4, num_kv_heads=cfg.num_kv_heads or 4,
      d_ff=cfg.d_ff or 128, vocab_size=50, swiglu=cfg.get('mlp') == 'swiglu')
  assert n == matmul_weights(params)
  batch = {'inputs': jax.ShapeDtypeStruct((8, 16), np.int32)}
  step_flops, formula = flops.train_step_flops(cfg, {'task': 'lm', 'vocab_size': 50}, batch)
  assert step_flops == (6 * n + 12 * 3 * 16 * 32) * 8 * 16 and '12 * L * T * d' in formula


def test_mlp_formula_and_gpt2_small_size():
  cfg = ml_collections.ConfigDict(dict(name='mlp', widths=(1024, 1024)))
  batch = {'inputs': jax.ShapeDtypeStruct((128, 28, 28, 1), np.float32)}
  n = 784 * 1024 + 1024 * 1024 + 1024 * 10
  assert flops.train_step_flops(cfg, {'num_classes': 10}, batch)[0] == 6 * n * 128
  # GPT-2 small's shape: 12 * 12 * 768^2 = 84.9M matmul weights in the layers.
  c = gpt2_small.get_config()
  layers = flops.transformer_matmul_params(
      num_layers=c.model.num_layers, d_model=c.model.d_model, num_heads=c.model.num_heads,
      num_kv_heads=c.model.num_heads, d_ff=4 * c.model.d_model, vocab_size=0)
  assert (layers, c.data.block_size) == (12 * 12 * 768**2, 1024)


def tiny_lm_config(data_dir, **overrides):
  config = shakespeare_char.get_config('tiny')
  config.data.data_dir = data_dir
  config.model.update(overrides)
  return config


def test_model_flops_agree_with_xla_cost_analysis(data_dir):
  """The analytic count is the matmuls; XLA's also counts elementwise ops, so it is a bit more."""
  from research import data

  config = tiny_lm_config(data_dir, d_model=64, num_heads=4)
  dataset = data.get_dataset(config, 0, 1)
  p_train, state, layout, _ = benchmark.build_step(config, dataset)
  batch = layout.put_batch(dataset.train_batch(0))
  compiled, _, _ = benchmark.compile_step(p_train, state, batch, layout)
  xla = flops.xla_flops(compiled) * jax.device_count()  # One device's SPMD program.
  model, _ = flops.train_step_flops(config.model, dataset.meta, batch)
  assert 0.75 < model / xla < 1.02, (model, xla)


def accumulation_case():
  """A 1-layer LM, SGD (updates proportional to the gradients, unlike Adam's) and a batch whose
  target masks give the micro-batches unequal weights: a mean of micro-batch means would differ."""
  model = models.get_model(ml_collections.ConfigDict(dict(
      name='transformer_lm', num_layers=1, d_model=32, num_heads=4, max_len=16)),
      {'vocab_size': 48, 'block_size': 16})
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 48, (32, 17)).astype(np.int32)
  mask = (rng.random((32, 16)) < np.linspace(0.1, 1.0, 32)[:, None]).astype(np.float32)
  batch = {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:], 'target_mask': mask}
  tx = optax.sgd(0.5)
  init = functools.partial(init_state, model, tx, {k: v[:1] for k, v in batch.items()}, 0)
  return model, tx, init, batch


@pytest.mark.parametrize('strategy, accum', [('jit', 4), ('pmap', 2)])
def test_accumulating_micro_batches_equals_one_big_batch_step(strategy, accum):
  model, tx, init, batch = accumulation_case()
  boxed = jax.eval_shape(init)
  layout = parallel.make_layout(ml_collections.ConfigDict(dict(
      strategy=strategy, data=-1, fsdp=1, tensor=1)), boxed, 32)
  results = []
  for k in (1, accum):
    p_train, _ = parallel.compile_steps(layout, functools.partial(
        train_step, apply_fn=model.apply, tx=tx, schedule=optax.constant_schedule(0.5),
        grad_accum_steps=k), functools.partial(eval_step, apply_fn=model.apply))
    state = layout.to_strategy(jax.jit(lambda: nn.unbox(init()),
                                       out_shardings=layout.state_sharding)())
    for _ in range(2):
      state, metrics = p_train(state, layout.put_batch(batch))
      jax.block_until_ready(metrics)
    params = [np.asarray(x) for x in jax.tree.leaves(layout.to_global(state).params)]
    results.append((params, {k: np.asarray(v).ravel()[0] for k, v in metrics.items()}))
  (big_params, big_metrics), (acc_params, acc_metrics) = results
  moved = max(np.abs(a - b).max() for a, b in zip(big_params, jax.tree.leaves(
      jax.device_get(nn.unbox(init()).params)), strict=True))
  assert moved > 1e-3  # The steps changed the params, so agreement is not that of a frozen model.
  for a, b in zip(big_params, acc_params, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for key in ('loss', 'accuracy', 'grad_norm'):
    np.testing.assert_allclose(big_metrics[key], acc_metrics[key], rtol=1e-5)


def test_grad_accum_steps_must_divide_the_batch():
  config = shakespeare_char.get_config('tiny')
  config.grad_accum_steps = 3
  with pytest.raises(ConfigError, match='batch_size 16 is not divisible by grad_accum_steps 3'):
    check_train_config(config)


def test_benchmark_reports_and_writes_json(data_dir, tmp_path, capsys):
  config = tiny_lm_config(data_dir)
  config.log_every_steps = 5
  config.benchmark.update(warmup_steps=1, timed_steps=2, loop_log_intervals=1)
  report = benchmark.benchmark(config, str(tmp_path))
  out = capsys.readouterr().out
  for row in ('compile', 'step (bare)', 'model FLOPs/step', 'MFU', 'full loop', 'memory/device'):
    assert row in out
  saved = json.loads((tmp_path / 'benchmark.json').read_text())
  assert saved['model_flops_per_step'] == report['model_flops_per_step'] > 0
  assert saved['tokens_per_sec'] == pytest.approx(16 * 32 * saved['steps_per_sec'])
  assert 0 < saved['mfu'] < 1 and saved['peak_source'].endswith('(whole host)')
  assert 0 < saved['mfu_cpu_time'] < 1 and saved['cpu_seconds_per_step'] > 0
  assert saved['loop']['steps'] == 5 and 0 <= saved['loop']['input_wait_frac'] < 1
  assert saved['loop']['cpu_seconds_per_step'] > 0 and saved['loop_overhead_cpu_frac'] is not None
  assert len(saved['step_seconds_each_run']) == 2  # Bare steps before and after the loop.
  assert saved['memory_per_device_bytes']['peak_estimate'] > 0
  assert not os.path.exists(tmp_path / 'loop_run')  # The loop's scratch run is removed.


def test_launch_benchmark_mlp_and_bad_input(data_dir, tmp_path):
  common = ['--config=experiments/mnist_mlp.py:smoke', f'--workdir={tmp_path}', '--mode=benchmark',
            f'--config.data.data_dir={data_dir}']
  bad = run_launch(common + ['--config.benchmark.timed_steps=0'])
  assert bad.returncode == 2 and 'config.benchmark.timed_steps must be a positive' in bad.stderr
  assert not os.path.exists(tmp_path / 'benchmark.json')
  ok = run_launch(common + ['--config.benchmark.timed_steps=3', '--config.benchmark.warmup_steps=1',
                            '--config.benchmark.loop_log_intervals=0',
                            '--config.benchmark.profile_steps=2'])
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert 'examples/s' in ok.stdout and 'MFU' in ok.stdout and 'time by op' in ok.stdout
  saved = json.loads((tmp_path / 'benchmark.json').read_text())
  by_kind = saved['op_profile']['by_kind']  # The profiler saw the step's XLA ops.
  assert by_kind and sum(r['share'] for r in by_kind) == pytest.approx(1.0)
  assert by_kind[0]['ms_per_step'] > 0 and all(r['ms_per_step'] >= 0 for r in by_kind)
  assert saved['devices'] == 1 and saved['tokens_per_sec'] is None and saved['loop'] is None
  assert saved['model_flops_per_step'] == 6 * (784 * 256 + 256 * 10) * 128
