"""research/runtime/resume_check.py: resuming with another model is refused with a diff before any
compute; harmless and risky changes are allowed and recorded; an extended run keeps its recorded
schedule length, and a new one is warned about with the old and new learning rate."""

import glob
import json
import os

import pytest
from helpers import mnist_smoke_config

from research.errors import ConfigError
from research.runtime import resume_check
from research.train import train_and_evaluate, write_config


def workdir_with_checkpoint(tmp_path, config):
  workdir = tmp_path / 'run'
  (workdir / 'checkpoints' / '10').mkdir(parents=True)
  (workdir / 'config.json').write_text(config.to_json_best_effort(sort_keys=True, indent=2))
  return str(workdir)


def test_resume_with_another_model_is_refused_with_a_diff_before_compute(tmp_path):
  workdir = workdir_with_checkpoint(tmp_path, mnist_smoke_config())
  before = {p: open(p, 'rb').read() for p in glob.glob(f'{workdir}/**', recursive=True)
            if os.path.isfile(p)}
  config = mnist_smoke_config()
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
  workdir = workdir_with_checkpoint(tmp_path, mnist_smoke_config())
  config = mnist_smoke_config()
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
  write_config(workdir, mnist_smoke_config())
  assert open(os.path.join(workdir, 'config.1.json')).read() == old  # History kept, in order.
  assert json.load(open(os.path.join(workdir, 'config.2.json')))['num_train_steps'] == 600


def test_a_run_recorded_before_a_model_key_existed_resumes_with_its_default(tmp_path):
  workdir = workdir_with_checkpoint(tmp_path, mnist_smoke_config())
  path = os.path.join(workdir, 'config.json')
  recorded = json.load(open(path))
  for key in ('num_layers', 'rotary_base', 'tie_embeddings', 'patch_size'):
    del recorded['model'][key]  # Keys an MLP's config.json lacked before base_config had them.
  json.dump(recorded, open(path, 'w'))
  assert resume_check.check_resume(workdir, mnist_smoke_config()) == {}
  changed = mnist_smoke_config()
  changed.model.rotary_base = 500.0  # Not what the recorded run used (the default).
  with pytest.raises(ConfigError, match='model.rotary_base: 10000.0 -> 500.0'):
    resume_check.check_resume(workdir, changed)


def finished_workdir(tmp_path, recorded_decay_steps):
  """A workdir whose smoke run (300 steps, warmup 200, cosine to 0) finished at step 300."""
  workdir = workdir_with_checkpoint(tmp_path, mnist_smoke_config())
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
  workdir = finished_workdir(tmp_path, recorded)
  config = mnist_smoke_config()
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
  config = mnist_smoke_config()
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
  config = mnist_smoke_config()
  assert resume_check.resolve_schedule(str(tmp_path), config).optimizer.decay_steps == 300
  config.optimizer.decay_steps = 1000
  assert resume_check.resolve_schedule(str(tmp_path), config).optimizer.decay_steps == 1000
