"""The one setup: config -> dataset, model, optimizer, abstract state and device layout.

Train, dryrun, benchmark, export and sampling all start here, so a model is built, shaped and
laid out the same way whatever the mode. Nothing is allocated on the devices: the state is
`jax.eval_shape`'d; `fresh_state` materialises it, already sharded, when a run needs one.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax

from research import checkpointing, data, models, optimizers, parallel
from research.errors import ConfigError
from research.models import decode
from research.train_step import TrainState, eval_step, init_state, train_step

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything a mode needs to run, compile or restore the model of one config."""

  config: ml_collections.ConfigDict
  dataset: data.Dataset
  model: nn.Module
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  init: Callable[[], TrainState]  # A fresh state with logical-axis boxes (for the shardings).
  layout: parallel.Layout
  abstract: TrainState  # Unboxed ShapeDtypeStructs carrying the layout's shardings.
  sampling: decode.Sampling | None = None  # A language model's text sample at each evaluation.

  @property
  def num_params(self) -> int:
    return sum(x.size for x in jax.tree.leaves(self.abstract.params))

  def step_fns(self) -> tuple[Callable, Callable]:
    """The pure train and eval step bodies for this model, optimizer and config."""
    c = self.config
    num_classes = self.dataset.meta.num_classes if is_classifier(self.dataset) else None
    return (functools.partial(train_step, apply_fn=self.model.apply, tx=self.tx,
                              schedule=self.schedule, nan_policy=c.nan_policy,
                              grad_accum_steps=c.grad_accum_steps),
            functools.partial(eval_step, apply_fn=self.model.apply, num_classes=num_classes))

  def compiled_steps(self) -> tuple[Callable, Callable]:
    """(train_step(state, batch), eval_step(params, batch)), jitted or pmapped by the layout."""
    return parallel.compile_steps(self.layout, *self.step_fns())

  def fresh_state(self) -> TrainState:
    """The initial state, created directly in its shardings (global layout)."""
    return jax.jit(lambda: nn.unbox(self.init()), out_shardings=self.layout.state_sharding)()


def is_classifier(dataset: data.Dataset) -> bool:
  return dataset.meta.task == 'classification'


def example_batch(dataset: data.Dataset) -> dict:
  """A batch of one with the shapes of the largest training batch (for init and compiling)."""
  return {k: np.zeros((1,) + v.shape[1:], v.dtype)
          for k, v in dataset.largest_train_batch(0).items()}


def build(config: ml_collections.ConfigDict, dataset: data.Dataset,
          devices: list | None = None) -> Setup:
  """The model, optimizer and layout of `config` on `dataset`; raises ConfigError on bad keys."""
  model = models.get_model(config.model, dataset.meta)
  sampling = None
  if dataset.meta.task == 'lm' and dataset.tokenizer is not None:  # Checked before any compute.
    sampling = decode.Sampling.from_config(config.get('sample'), dataset.tokenizer)
  tx, schedule = optimizers.make_optimizer(config.optimizer, config.num_train_steps)
  init = functools.partial(init_state, model, tx, example_batch(dataset), config.seed)
  boxed = jax.eval_shape(init)
  layout = parallel.make_layout(config.parallel, boxed, config.batch_size, devices)
  if config.eval_batch_size % layout.data_parallel:
    raise ConfigError(f'eval_batch_size {config.eval_batch_size} does not divide over the '
                      f'data-parallel size {layout.data_parallel}.')
  abstract = checkpointing.abstract_like(nn.unbox(boxed), layout.state_sharding)
  return Setup(config, dataset, model, tx, schedule, init, layout, abstract, sampling)


def restore_params(config: ml_collections.ConfigDict, workdir: str, model: nn.Module,
                   example: dict, step: int | None = None) -> tuple[int, PyTree]:
  """(step, params) on one device: the newest checkpoint in WORKDIR that restores, or `step`.

  The whole train state is restored (its checksums cover every array) into an abstract target
  built from this config's model and optimizer, with `example` (a batch of one) for the shapes.
  Read-only: nothing in WORKDIR is created or removed.
  """
  tx, _ = optimizers.make_optimizer(config.optimizer, config.num_train_steps)
  abstract = nn.unbox(jax.eval_shape(functools.partial(init_state, model, tx, example,
                                                       config.seed)))
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = checkpointing.abstract_like(abstract, jax.tree.map(lambda _: one_device, abstract))
  manager = checkpointing.open_reader(workdir, config.checkpoint)
  try:
    restored = checkpointing.restore_latest(manager, target, step)
  finally:
    manager.close()
  if restored is None:
    raise ConfigError(f'No checkpoint in {manager.directory} restores into the model and optimizer '
                      'of this config; use the config the run was trained with.')
  return restored[0], restored[1].params
