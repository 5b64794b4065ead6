"""Orbax checkpoints under WORKDIR/checkpoints: the train state plus the input position.

Keeps the newest `keep` steps plus the best by an eval metric. Restore always targets an abstract
state built for the current devices (shapes, dtypes and shardings), so a checkpoint written on one
topology restores onto another. A step that fails to restore is reported and the next older one
is tried, so a corrupt or partial checkpoint costs progress, never the run.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

PyTree = Any


def make_manager(workdir: str, cfg: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  policies = ocp.checkpoint_managers
  keep = [policies.LatestN(n=cfg.keep)]
  if cfg.best_metric:
    keep.append(policies.BestN(get_metric_fn=lambda m: m[cfg.best_metric],
                               reverse=cfg.best_mode == 'min', n=1,
                               keep_checkpoints_without_metrics=False))
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policies.AnyPreservationPolicy(keep),
      enable_async_checkpointing=cfg.async_save, create=True, cleanup_tmp_directories=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                               item_names=('state', 'data'), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: PyTree, data_position: dict,
         metrics: dict | None = None) -> None:
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             data=ocp.args.JsonSave(data_position)),
               metrics=metrics)


def abstract_like(state: PyTree, shardings: PyTree) -> PyTree:
  """ShapeDtypeStructs carrying the *current* shardings: the restore target."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: PyTree,
                   step: int | None = None) -> tuple[int, PyTree, dict] | None:
  """(step, state, data_position) of the newest step that restores cleanly, or None if none."""
  steps = sorted(manager.all_steps(), reverse=True)
  if step is not None:
    steps = [s for s in steps if s == step]
  for s in steps:
    try:
      restored = manager.restore(s, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 - any failure means this step is unusable.
      logging.error('Checkpoint step %d under %s failed to restore (%s: %s); trying an older one.',
                    s, manager.directory, type(e).__name__, str(e)[:500])
      continue
    return s, restored['state'], dict(restored['data'])
  return None
