"""launch.py with config.init_from=hf:PATH (research/hf): a Hugging Face GPT-2 continues training.

The first evaluation (step 0, before any update) must be transformers' own validation loss on
the same windows (shared/fixtures/hf/gpt2_tiny/reference.json); bad input is one error line.
"""

import json
import os

from conftest import require_fixture, run_launch

CONFIG = 'experiments/gpt2_tiny_shakespeare.py:tiny'


def test_gpt2_from_hf_first_eval_is_transformers_val_loss(tmp_path, data_dir):
  path = require_fixture('hf/gpt2_tiny')
  with open(os.path.join(path, 'reference.json')) as f:
    val_loss = json.load(f)['val_loss']
  workdir = tmp_path / 'run'
  result = run_launch([f'--config={CONFIG}', f'--workdir={workdir}',
                       f'--config.data.data_dir={data_dir}', f'--config.init_from=hf:{path}'])
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'config.model.gelu' in result.stdout and 'loaded: 28 tensors' in result.stdout
  with open(workdir / 'metrics.jsonl') as f:
    evals = [r for r in map(json.loads, f) if r['split'] == 'eval']
  assert evals[0]['step'] == 0 and abs(evals[0]['loss'] - val_loss) < 1e-4, evals[0]
  assert evals[-1]['step'] == 2
  record = json.loads((workdir / 'init_from.json').read_text())
  assert len(record['loaded']) == 28 and not record['new'] and not record['left_out']
  assert json.loads((workdir / 'vocab.json').read_text())['type'] == 'hf'


def test_a_folder_without_config_json_is_one_error_line(tmp_path):
  result = run_launch([f'--config={CONFIG}', f'--workdir={tmp_path / "run"}',
                       f'--config.init_from=hf:{tmp_path}'])
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and 'config.json is missing' in errors[0], result.stderr[-2000:]


def test_export_hf_of_an_unchanged_gpt2_reproduces_the_checkpoint_bit_for_bit(tmp_path, data_dir):
  """Every param frozen, so the exported folder must be the fixture's, tensor for tensor."""
  from research.hf import files

  path = require_fixture('hf/gpt2_tiny')
  workdir = tmp_path / 'run'
  frozen = "--config.optimizer.freeze=('token_embed','position_embed','stack','final_norm')"
  result = run_launch([f'--config={CONFIG}', f'--workdir={workdir}', frozen,
                       f'--config.data.data_dir={data_dir}', f'--config.init_from=hf:{path}',
                       '--config.sample.num_tokens=0', '--config.eval_at_start=False'])
  assert result.returncode == 0, result.stderr[-3000:]
  result = run_launch(['--mode=export', '--format=hf', f'--workdir={workdir}'])
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'read back bit for bit' in result.stdout
  out = workdir / 'export_hf'
  ours = files.read_tensors([str(out / 'model.safetensors')])
  theirs = files.read_tensors([os.path.join(path, 'model.safetensors')])
  assert sorted(ours) == sorted(theirs)
  for name, tensor in theirs.items():
    assert ours[name].dtype == tensor.dtype and ours[name].shape == tensor.shape, name
    assert ours[name].tobytes() == tensor.tobytes(), name
  with open(os.path.join(path, 'config.json')) as f:
    config = json.load(f)
  config.pop('transformers_version')
  assert json.loads((out / 'config.json').read_text()) == config
  with open(os.path.join(path, 'tokenizer.json')) as f:
    assert (out / 'tokenizer.json').read_text() == f.read()
  # --mode=sample, greedy, from the same (unchanged) params: transformers' generate() text.
  with open(os.path.join(path, 'reference.json')) as f:
    greedy_text = json.load(f)['greedy_text']
  result = run_launch([f'--config={CONFIG}', f'--workdir={workdir}', frozen, '--mode=sample',
                       '--prompt=ROMEO:\nWhat light', '--temperature=0', '--num_tokens=30'])
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.rstrip('\n').endswith(greedy_text), result.stdout[-500:]


def test_sst2_classifier_fine_tunes_from_bert_and_exports_as_hf(tmp_path, data_dir):
  """bert_tiny's WordPiece tokenizes SST-2; the pooler and head are new, the MLM head left out;
  the fine-tuned run exports as BertForSequenceClassification, read back bit for bit."""
  from research.hf import files

  require_fixture('hf/bert_tiny')
  workdir = tmp_path / 'run'
  result = run_launch(['--config=experiments/sst2_encoder.py:hf_tiny', f'--workdir={workdir}',
                       f'--config.data.data_dir={data_dir}', '--config.num_train_steps=4',
                       '--config.eval_every_steps=4', '--config.checkpoint_every_steps=4'])
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads((workdir / 'init_from.json').read_text())
  assert sorted(record['new']) == ['head/bias', 'head/kernel', 'pooler/bias', 'pooler/kernel']
  assert all(n.startswith('cls.predictions.') for n in record['left_out'])
  assert len(record['loaded']) == 37
  result = run_launch(['--mode=export', '--format=hf', f'--workdir={workdir}'])
  assert result.returncode == 0, result.stderr[-3000:]
  out = workdir / 'export_hf'
  config = json.loads((out / 'config.json').read_text())
  assert config['architectures'] == ['BertForSequenceClassification'] and config['num_labels'] == 2
  names = set(files.read_tensors([str(out / 'model.safetensors')]))
  assert {'bert.pooler.dense.weight', 'classifier.weight', 'classifier.bias'} <= names
  assert (out / 'tokenizer.json').exists() and (out / 'tokenizer_config.json').exists()
