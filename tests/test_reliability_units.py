"""Reliability pieces in-process (8 fake CPU devices): corrupt checkpoints, checksums, config
safety on resume, stop signals, exact-resume bookkeeping."""

import glob
import json
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from research import checkpointing, metrics, runtime
from research.errors import CheckpointError, ConfigError
from research.runtime import faults, resume_check
from research.runtime.signals import StopSignals

CKPT = ml_collections.ConfigDict(dict(keep=3, best_metric='', best_mode='max', async_save=True))


def mesh_state(i, fsdp=True):
  mesh = jax.make_mesh((8,), ('fsdp',), axis_types=(jax.sharding.AxisType.Auto,))
  spec = P('fsdp') if fsdp else P()
  w = jax.random.normal(jax.random.key(i), (256, 256))  # Big enough for bytes mid-array.
  return {'w': jax.device_put(w, NamedSharding(mesh, spec)),
          'b': jax.device_put(jnp.full((16,), i, jnp.bfloat16), NamedSharding(mesh, P())),
          'step': jax.device_put(jnp.int32(i), NamedSharding(mesh, P())),
          'mask': jax.device_put(jnp.arange(8) % 2 == 0, NamedSharding(mesh, P()))}


def abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """A workdir with complete checkpoints at steps 10 and 20."""
  workdir = tmp_path_factory.mktemp('ckpt')
  manager = checkpointing.make_manager(str(workdir), CKPT)
  for step in (10, 20):
    checkpointing.save(manager, step, mesh_state(step), {'step': step})
  checkpointing.wait(manager)
  manager.close()
  return str(workdir)


def biggest_file(step_dir):
  """The largest OCDBT data file (on a tie, the merged copy under state/d, which restore reads)."""
  files = glob.glob(f'{step_dir}/state/d/*') + glob.glob(f'{step_dir}/state/ocdbt.*/d/*')
  return max(files, key=os.path.getsize)


def truncate(step_dir):
  path = biggest_file(step_dir)
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def garbage(step_dir):  # Same size, other bytes: Orbax alone restores this silently.
  path = biggest_file(step_dir)
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    f.write(b'\x13\x37' * 16)


def corrupt_json(step_dir):
  with open(os.path.join(step_dir, 'data', 'metadata'), 'w') as f:
    f.write('{"step": 2')


CORRUPTIONS = {  # kind: (corrupt step 20, text the report must contain)
    'truncated file': (truncate, '/20: ValueError'),
    'missing shard': (lambda d: os.remove(biggest_file(d)), '/20: ValueError'),
    'garbage bytes': (garbage, "checksum mismatch in 1 array(s) [\"['w']\"]"),
    'missing item': (lambda d: shutil.rmtree(os.path.join(d, 'data')), '/20/data is missing'),
    'garbage json': (corrupt_json, '/20/data/metadata is unreadable or not valid JSON'),
}


@pytest.mark.parametrize('kind', list(CORRUPTIONS))
def test_corrupt_newest_checkpoint_is_reported_and_the_older_one_used(kind, saved, tmp_path,
                                                                      caplog):
  workdir = str(tmp_path / 'w')
  shutil.copytree(saved, workdir)
  corrupt, report = CORRUPTIONS[kind]
  corrupt(os.path.join(workdir, 'checkpoints', '20'))
  manager = checkpointing.make_manager(workdir, CKPT)
  step, state, position = checkpointing.restore_latest(manager, abstract(mesh_state(0)))
  manager.close()
  assert (step, position) == (10, {'step': 10})
  for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(mesh_state(10)), strict=True):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  errors = [r.getMessage() for r in caplog.records if r.levelname == 'ERROR']
  assert any('step 20' in e and report in e for e in errors), errors


def test_leftover_temporary_folder_is_reported_removed_and_ignored(saved, tmp_path, caplog):
  workdir = str(tmp_path / 'w')
  shutil.copytree(saved, workdir)
  leftover = os.path.join(workdir, 'checkpoints', '30.orbax-checkpoint-tmp-1234')
  shutil.copytree(os.path.join(workdir, 'checkpoints', '20'), leftover)
  os.remove(biggest_file(leftover))
  manager = checkpointing.make_manager(workdir, CKPT)
  step, _, _ = checkpointing.restore_latest(manager, abstract(mesh_state(0)))
  manager.close()
  assert step == 20
  assert any('step 30 was interrupted' in r.getMessage() and leftover in r.getMessage()
             for r in caplog.records)
  assert not os.path.exists(leftover)


def test_no_restorable_checkpoint_refuses_to_start_over_and_deletes_nothing(saved, tmp_path):
  workdir = str(tmp_path / 'w')
  shutil.copytree(saved, workdir)
  for step in ('10', '20'):
    garbage(os.path.join(workdir, 'checkpoints', step))
  before = sorted(glob.glob(f'{workdir}/**', recursive=True))
  manager = checkpointing.make_manager(workdir, CKPT)
  with pytest.raises(CheckpointError, match=r'(?s)No checkpoint .* restores.*step 20.*step 10'):
    checkpointing.restore_latest(manager, abstract(mesh_state(0)))
  manager.close()
  assert sorted(glob.glob(f'{workdir}/**', recursive=True)) == before


def test_changed_shapes_are_refused_before_restore_naming_the_array(saved):
  manager = checkpointing.make_manager(saved, CKPT)
  wrong = abstract(mesh_state(0))
  wrong['w'] = jax.ShapeDtypeStruct((256, 64), jnp.float32, sharding=wrong['w'].sharding)
  with pytest.raises(ConfigError, match=r'w: saved \(256, 256\), now \(256, 64\)'):
    checkpointing.restore_latest(manager, wrong)
  manager.close()


def test_checksums_see_one_changed_element_and_ignore_the_topology():
  sharded, replicated = mesh_state(3, fsdp=True), mesh_state(3, fsdp=False)
  sums = checkpointing.state_checksums(sharded)
  assert sums == checkpointing.state_checksums(replicated)
  assert sums == checkpointing.state_checksums(jax.device_get(sharded))  # Host numpy too.
  changed = dict(sharded, w=sharded['w'].at[37, 5].add(1e-6))
  swapped = dict(sharded, b=sharded['b'].at[0].set(3.5))
  assert checkpointing.state_checksums(changed)["['w']"] != sums["['w']"]
  assert checkpointing.state_checksums(swapped)["['b']"] != sums["['b']"]


def test_async_save_errors_are_raised_with_the_disk_full_message(tmp_path):
  manager = checkpointing.make_manager(str(tmp_path), CKPT)
  checkpointing.save(manager, 1, mesh_state(1), {'step': 1})
  checkpointing.wait(manager)
  faults.Fault('enospc_in_save', 2).before_save(2)
  checkpointing.save(manager, 2, mesh_state(2), {'step': 2})  # Fails in the background.
  with pytest.raises(CheckpointError, match=r'Saving step 2 .* The newest complete checkpoint, '
                                            r'step 1, is intact\. The disk is full'):
    checkpointing.wait(manager)
  assert checkpointing.complete_steps(str(manager.directory)) == [1]


# --- Exact-resume bookkeeping ----------------------------------------------------------------


def test_truncate_jsonl_drops_later_steps_and_a_torn_line(tmp_path):
  path = str(tmp_path / 'metrics.jsonl')
  lines = [json.dumps({'step': s, 'split': 'train'}) + '\n' for s in (5, 10, 15)]
  with open(path, 'w') as f:
    f.writelines(lines + ['{"step": 20, "spl'])
  assert metrics.truncate_jsonl(path, 10) == 2
  assert open(path).read() == ''.join(lines[:2])
  assert metrics.truncate_jsonl(path, 10) == 0


def test_pending_metrics_round_trip_exactly_through_json():
  pending = [{'loss': jnp.float32(0.1 * i + 1e-7), 'nonfinite': jnp.float32(0)} for i in range(3)]
  restored = metrics.pending_from_json(json.loads(json.dumps(
      metrics.pending_to_json(pending))))
  for a, b in zip(pending, restored, strict=True):
    for k in a:
      assert np.asarray(a[k]).tobytes() == b[k].tobytes() and b[k].dtype == np.float32


# --- Config safety -------------------------------------------------------------------------


def workdir_with_checkpoint(tmp_path, config):
  workdir = tmp_path / 'run'
  (workdir / 'checkpoints' / '10').mkdir(parents=True)
  (workdir / 'config.json').write_text(config.to_json_best_effort(sort_keys=True, indent=2))
  return str(workdir)


def smoke_config(data_dir='/nonexistent'):
  import experiments.mnist_mlp as mnist_mlp

  config = mnist_mlp.get_config('smoke')
  config.data.data_dir = data_dir
  return config


def test_resume_with_another_model_is_refused_with_a_diff_before_compute(tmp_path):
  from research.train import train_and_evaluate

  workdir = workdir_with_checkpoint(tmp_path, smoke_config())
  before = {p: open(p, 'rb').read() for p in glob.glob(f'{workdir}/**', recursive=True)
            if os.path.isfile(p)}
  config = smoke_config()
  config.model.widths = (32,)
  config.optimizer.name = 'sgd'
  config.num_train_steps = 5  # Harmless; not part of the refusal.
  with pytest.raises(ConfigError) as e:
    train_and_evaluate(config, workdir)  # Fails before data: data_dir does not even exist.
  assert 'model.widths: [256] -> [32]' in str(e.value)
  assert 'optimizer.name: "adamw" -> "sgd"' in str(e.value)
  assert 'num_train_steps' not in str(e.value)
  after = {p: open(p, 'rb').read() for p in glob.glob(f'{workdir}/**', recursive=True)
           if os.path.isfile(p)}
  assert after == before


def test_harmless_and_risky_changes_are_allowed_and_recorded(tmp_path, caplog):
  from research.train import write_config

  workdir = workdir_with_checkpoint(tmp_path, smoke_config())
  config = smoke_config()
  config.num_train_steps, config.step_timeout_s = 600, 60.0
  config.optimizer.learning_rate = 3e-4
  diff = resume_check.check_resume(workdir, config)
  assert set(diff) == {'num_train_steps', 'step_timeout_s', 'optimizer.learning_rate'}
  warned = ' '.join(r.getMessage() for r in caplog.records if r.levelname == 'WARNING'
                    and 'differ from an uninterrupted' in r.getMessage())
  assert 'optimizer.learning_rate' in warned and 'num_train_steps' not in warned
  resume_check.record(workdir, diff)
  record = json.loads(open(os.path.join(workdir, 'config_changes.jsonl')).read())
  assert record['latest_checkpoint'] == 10 and record['changes']['num_train_steps'] == [300, 600]
  old = open(os.path.join(workdir, 'config.json')).read()
  write_config(workdir, config)
  write_config(workdir, smoke_config())
  assert open(os.path.join(workdir, 'config.1.json')).read() == old  # History kept, in order.
  assert json.load(open(os.path.join(workdir, 'config.2.json')))['num_train_steps'] == 600


def test_a_run_recorded_before_a_model_key_existed_resumes_with_its_default(tmp_path):
  workdir = workdir_with_checkpoint(tmp_path, smoke_config())
  path = os.path.join(workdir, 'config.json')
  recorded = json.load(open(path))
  for key in ('num_layers', 'rotary_base', 'tie_embeddings', 'patch_size'):
    del recorded['model'][key]  # Keys an MLP's config.json lacked before base_config had them.
  json.dump(recorded, open(path, 'w'))
  assert resume_check.check_resume(workdir, smoke_config()) == {}
  changed = smoke_config()
  changed.model.rotary_base = 500.0  # Not what the recorded run used (the default).
  with pytest.raises(ConfigError, match='model.rotary_base: 10000.0 -> 500.0'):
    resume_check.check_resume(workdir, changed)


def finished_workdir(tmp_path, recorded_decay_steps):
  """A workdir whose smoke run (300 steps, warmup 200, cosine to 0) finished at step 300."""
  workdir = workdir_with_checkpoint(tmp_path, smoke_config())
  os.mkdir(os.path.join(workdir, 'checkpoints', '300'))
  path = os.path.join(workdir, 'config.json')
  recorded = json.load(open(path))
  if recorded_decay_steps is None:  # Written before the key existed.
    del recorded['optimizer']['decay_steps']
  else:
    recorded['optimizer']['decay_steps'] = recorded_decay_steps
  json.dump(recorded, open(path, 'w'))
  return workdir


def warnings_of(caplog):
  return ' '.join(r.getMessage() for r in caplog.records if r.levelname == 'WARNING')


@pytest.mark.parametrize('recorded', [None, 0, 300])
def test_extending_a_run_keeps_its_recorded_schedule_length(tmp_path, caplog, recorded):
  from research.train import write_config

  workdir = finished_workdir(tmp_path, recorded)
  config = smoke_config()
  config.num_train_steps = 600
  resolved = resume_check.resolve_schedule(workdir, config)
  assert resolved.optimizer.decay_steps == 300 and config.optimizer.decay_steps == 0
  assert set(resume_check.check_resume(workdir, config)) == {'num_train_steps'}
  assert ('keeps its length of 300 steps (config.optimizer.decay_steps), so steps 301..600 '
          'train at its final LR 0') in warnings_of(caplog)
  assert 'schedule changed' not in warnings_of(caplog)
  write_config(workdir, resolved)  # As train.py records it; a second extension keeps it too.
  config.num_train_steps = 900
  assert resume_check.resolve_schedule(workdir, config).optimizer.decay_steps == 300


def test_a_new_schedule_length_on_resume_is_warned_with_the_old_and_new_lr(tmp_path, caplog):
  workdir = finished_workdir(tmp_path, 300)
  config = smoke_config()
  config.num_train_steps = config.optimizer.decay_steps = 600
  assert resume_check.resolve_schedule(workdir, config).optimizer.decay_steps == 600
  diff = resume_check.check_resume(workdir, config)
  assert diff['optimizer.decay_steps'] == (300, 600)
  # Cosine over steps 200..600 at step 300: 1e-3 * (1 + cos(pi / 4)) / 2.
  assert ('The learning-rate schedule changed (optimizer.decay_steps 300 -> 600): the first '
          'update after step 300 (the newest checkpoint) had LR 0 and now has 0.0008536'
          ) in warnings_of(caplog)
  assert 'final LR' not in warnings_of(caplog)  # The new schedule covers the extension.


def test_a_fresh_run_schedules_over_num_train_steps(tmp_path):
  config = smoke_config()
  assert resume_check.resolve_schedule(str(tmp_path), config).optimizer.decay_steps == 300
  config.optimizer.decay_steps = 1000
  assert resume_check.resolve_schedule(str(tmp_path), config).optimizer.decay_steps == 1000


# --- Signals and config checks -------------------------------------------------------------


class Redelivered(Exception):
  pass


def raise_redelivered(signum, frame):
  raise Redelivered(signum)


@pytest.mark.parametrize('sig, previous, raised', [
    (signal.SIGINT, signal.default_int_handler, KeyboardInterrupt),
    (signal.SIGTERM, raise_redelivered, Redelivered),  # Stands in for SIGTERM's default: exit.
])
def test_first_signal_sets_a_flag_second_acts_at_once_and_close_restores(sig, previous, raised):
  # A known previous handler, not whatever the process started with: pytest run as a background
  # job of a non-interactive shell inherits SIGINT ignored, and a re-delivered SIGINT then does
  # nothing. raise_signal delivers to this thread, so the handler has run when it returns.
  saved = {s: signal.getsignal(s) for s in StopSignals.SIGNALS}
  signals = None
  try:
    signal.signal(sig, previous)
    signals = StopSignals()
    assert not signals.should_stop(at_log_point=True)
    signal.raise_signal(sig)
    assert signals.received == sig.name and signals.should_stop(at_log_point=False)
    with pytest.raises(raised):
      signal.raise_signal(sig)
    assert signal.getsignal(sig) is previous
  finally:  # Never leave a handler behind for later tests.
    if signals is not None:
      signals.close()
    for s, handler in saved.items():
      signal.signal(s, handler)


@pytest.mark.parametrize('spec', ['nan', 'nan@0', 'boom@3', 'hang@x'])
def test_bad_fault_specs_and_timeouts_are_config_errors(spec, monkeypatch):
  config = smoke_config()
  monkeypatch.setenv('RESEARCH_FAULT_INJECTION', spec)
  with pytest.raises(ConfigError, match='KIND@STEP'):
    runtime.check_config(config)
  monkeypatch.delenv('RESEARCH_FAULT_INJECTION')
  config = smoke_config()
  config.step_timeout_s = -1.0
  with pytest.raises(ConfigError, match='step_timeout_s must be >= 0'):
    runtime.check_config(config)
