"""Sweep reports from hand-made runs with known means, stds and t-test results."""

import csv
import json
import math
import struct

import numpy as np
import pytest
from conftest import run_launch
from scipy import stats

from research.errors import ConfigError
from research.tools import report

# Final eval accuracy per seed; A is the baseline. B beats A on average but within seed noise
# (Welch p = 0.0548); C is worse beyond it (p = 0.00366); D is worse with p = 0.0316 < 0.05, but
# not once Holm accounts for the 3 comparisons (see HOLM_P). Loss is 1 - accuracy, so "lower is
# better" is exercised too.
FINALS = {'A': [0.90, 0.92, 0.94], 'B': [0.95, 0.96, 0.97], 'C': [0.80, 0.81, 0.82],
          'D': [0.86, 0.87, 0.88]}
LR = {'A': 0.001, 'B': 0.003, 'C': 0.01, 'D': 0.0003}
# Holm over the 3 Welch p-values, sorted: C 0.00366 * 3 = 0.0110; D 0.0316 * 2 = 0.0631;
# B 0.0548 * 1 = 0.0548, raised to the running maximum 0.0631.
HOLM_P = {'B': 2 * 0.0315622, 'C': 3 * 0.0036600, 'D': 2 * 0.0315622}
# Hedges' g vs A: every setting has std 0.01 and A 0.02 (n = 3 each), so the pooled std is
# sqrt((2 * 0.01^2 + 2 * 0.02^2) / 4) = sqrt(0.00025) = 0.0158114, and for v = 4 degrees of
# freedom J = Gamma(2) / (sqrt(2) Gamma(1.5)) = 1 / (sqrt(2) * sqrt(pi) / 2) = 0.797885.
G = {'B': 0.797885 * 0.04 / 0.0158114, 'C': 0.797885 * -0.11 / 0.0158114,
     'D': 0.797885 * -0.05 / 0.0158114}
STEPS = 200


def write_run(workdir, name, setting, seed, final, status='done', first=None, extra_lines=()):
  run = workdir / name
  run.mkdir(parents=True)
  config = {'seed': seed, 'num_train_steps': STEPS, 'optimizer': {'learning_rate': LR[setting]},
            'checkpoint': {'best_metric': 'accuracy', 'best_mode': 'max'}}
  (run / 'config.json').write_text(json.dumps(config))
  first = final - 0.1 if first is None else first
  lines = [{'step': 100, 'split': 'train', 'loss': 2.0},
           {'step': 100, 'split': 'eval', 'accuracy': first, 'loss': 1 - first,
            'num_targets': 1000.0},
           *extra_lines,
           {'step': 200, 'split': 'train', 'loss': 1.0},
           {'step': 200, 'split': 'eval', 'accuracy': final, 'loss': 1 - final,
            'num_targets': 1000.0}]
  (run / 'metrics.jsonl').write_text(''.join(json.dumps(x) + '\n' for x in lines))
  if status == 'done':
    (run / 'summary.json').write_text(json.dumps({'step': STEPS, 'accuracy': final}))
  return {'name': name, 'setting': f'lr={LR[setting]}', 'status': status,
          'overrides': {'optimizer.learning_rate': LR[setting], 'seed': seed},
          'error': 'research.train.NonFiniteError: loss is nan' if status == 'failed' else None}


@pytest.fixture
def sweep_dir(tmp_path):
  entries = []
  for setting, finals in FINALS.items():
    for seed, final in enumerate(finals):
      # A seed 0 peaks early (best 0.99 at step 100); A seed 1 was resumed and logged step 200
      # twice: the later line wins.
      first = 0.99 if (setting, seed) == ('A', 0) else None
      extra = ([{'step': 200, 'split': 'eval', 'accuracy': 0.5, 'loss': 0.5}]
               if (setting, seed) == ('A', 1) else [])
      entries.append(write_run(tmp_path, f'lr={LR[setting]}__seed={seed}', setting, seed, final,
                               first=first, extra_lines=extra))
  entries.append(write_run(tmp_path, 'lr=0.003__seed=3', 'B', 3, 0.1, status='failed'))
  manifest = {'config': 'exp.py', 'shared_overrides': {'num_train_steps': STEPS},
              'baseline': 'lr=0.001', 'points': entries}
  (tmp_path / 'sweep.json').write_text(json.dumps(manifest))
  return tmp_path


def event_tags(path) -> dict[str, str]:
  """Summary tag -> plugin name in a TensorBoard event file (TFRecord framing)."""
  from tensorboardX.proto import event_pb2

  data, i, tags = path.read_bytes(), 0, {}
  while i < len(data):
    (n,) = struct.unpack('<Q', data[i:i + 8])
    event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
    tags.update({v.tag: v.metadata.plugin_data.plugin_name for v in event.summary.value})
    i += 12 + n + 4
  return tags


def welch_by_hand(a, b):
  va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
  t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
  df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
  return 2 * stats.t.sf(abs(t), df)


def test_describe_and_welch_match_hand_computation():
  st = report.describe([1.0, 2.0, 3.0])
  half = 4.302652729749462 / math.sqrt(3)  # t_{0.975, 2} * std / sqrt(n), std = 1.
  assert (st.n, st.mean, st.std) == (3, 2.0, 1.0)
  assert st.ci_low == pytest.approx(2 - half) and st.ci_high == pytest.approx(2 + half)
  assert math.isnan(report.describe([5.0]).std) and report.describe([]).n == 0
  assert report.welch_p(FINALS['B'], FINALS['A']) == pytest.approx(0.054787, abs=1e-5)
  assert report.welch_p(FINALS['C'], FINALS['A']) == pytest.approx(0.0036600, abs=1e-6)
  assert report.welch_p(FINALS['B'], FINALS['A']) == pytest.approx(
      welch_by_hand(FINALS['B'], FINALS['A']))
  assert math.isnan(report.welch_p([1.0], [1.0, 2.0]))


def test_holm_matches_hand_computation():
  # Sorted finite p: 0.005, 0.01, 0.03, 0.04 (m = 4) -> 4 * 0.005 = 0.02, 3 * 0.01 = 0.03,
  # 2 * 0.03 = 0.06, 1 * 0.04 = 0.04 raised to the running maximum 0.06. All four raw p < 0.05;
  # after Holm only two. nan is no comparison: kept, and not counted in m.
  got = report.holm([0.01, math.nan, 0.04, 0.03, 0.005])
  assert math.isnan(got[1])
  assert [got[i] for i in (0, 2, 3, 4)] == pytest.approx([0.03, 0.06, 0.06, 0.02])
  # Capped at 1 and never below an earlier (smaller) p's value: 2 * 0.5 = 1.0, then 0.6 -> 1.0.
  assert report.holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])
  assert report.holm([0.02]) == [0.02] and report.holm([]) == []


def test_hedges_g_matches_hand_computation():
  for setting in 'BCD':
    assert report.hedges_g(FINALS[setting], FINALS['A']) == pytest.approx(G[setting], rel=1e-5)
  # n = 2 each: [1, 3] vs [0, 2], std sqrt(2) both, d = 1 / sqrt(2); v = 2, J = Gamma(1) /
  # (1 * Gamma(0.5)) = 1 / sqrt(pi).
  assert report.hedges_g([1.0, 3.0], [0.0, 2.0]) == pytest.approx(
      1 / math.sqrt(2) / math.sqrt(math.pi))
  assert math.isnan(report.hedges_g([1.0], [1.0, 2.0]))
  assert report.hedges_g([2.0, 2.0], [1.0, 1.0]) == math.inf  # No seed noise at all.
  assert report.hedges_g([1.0, 1.0], [1.0, 1.0]) == 0.0


def test_report_statistics_best_and_failures(sweep_dir):
  out = report.write_report(str(sweep_dir))
  assert out['primary'] == 'accuracy' and out['best'] == {'accuracy': 'lr=0.003',
                                                         'loss': 'lr=0.003'}
  rows = {(r['metric'], r['setting']): r for r in out['rows']}
  a, b, c, d = (rows['accuracy', f'lr={LR[k]}'] for k in 'ABCD')
  assert (a['final'].n, b['final'].n, c['final'].n) == (3, 3, 3)  # The failed seed is left out.
  assert a['final'].mean == pytest.approx(0.92) and a['final'].std == pytest.approx(0.02)
  assert a['final'].ci_high - a['final'].mean == pytest.approx(4.302653 * 0.02 / math.sqrt(3))
  assert a['best'].mean == pytest.approx((0.99 + 0.92 + 0.94) / 3)  # Best over steps per seed.
  assert b['delta'] == pytest.approx(0.04) and b['p'] == pytest.approx(0.054787, abs=1e-5)
  for setting, row in zip('BCD', (b, c, d), strict=True):
    assert row['p_holm'] == pytest.approx(HOLM_P[setting], abs=1e-5)
    assert row['g'] == pytest.approx(G[setting], rel=1e-5)
  assert math.isnan(a['p_holm']) and math.isnan(a['g'])
  assert d['p'] < 0.05 and not d['beyond_noise']  # Holm: 0.0631.
  assert not b['beyond_noise'] and c['beyond_noise'] and not c['better']
  loss_c = rows['loss', 'lr=0.01']
  assert loss_c['final'].mean == pytest.approx(0.19) and not loss_c['better']
  assert loss_c['g'] == pytest.approx(-G['C'], rel=1e-5) and loss_c['beyond_noise']
  assert rows['loss', 'lr=0.001']['best'].mean == pytest.approx(1 - a['best'].mean)

  md = (sweep_dir / 'report.md').read_text()
  assert '| learning_rate=0.003 ★ | 3 | 0.9600 ± 0.0100 |' in md
  assert '| learning_rate=0.001 | 3 | 0.9200 ± 0.0200 | [0.8703, 0.9697] |' in md
  # Δ | Hedges' g | p (Welch) | p (Holm) | verdict.
  assert '| 0.0400 | 2.02 | 0.0548 | 0.0631 | no |' in md
  assert '| -0.1100 | -5.55 | 0.00366 | 0.011 | yes, worse |' in md
  assert '| -0.0500 | -2.52 | 0.0316 | 0.0631 | no |' in md
  assert '| – | – | – | – | baseline |' in md
  assert 'vs baseline: g=2.02, p=0.0548, Holm p=0.0631, beyond seed noise: no' in md
  failed = md.split('## Failed and incomplete points')[1]
  assert '`lr=0.003__seed=3` | failed | research.train.NonFiniteError' in failed
  assert '1 failed' in md and 'Baseline: **learning_rate=0.001**' in md

  with open(sweep_dir / 'report.csv') as f:
    table = {(r['metric'], r['setting']): r for r in csv.DictReader(f)}
  assert float(table['accuracy', 'lr=0.01']['p_welch_vs_baseline']) == pytest.approx(0.00366,
                                                                                    abs=1e-5)
  assert float(table['accuracy', 'lr=0.0003']['p_holm_vs_baseline']) == pytest.approx(
      HOLM_P['D'], abs=1e-5)
  assert float(table['accuracy', 'lr=0.0003']['hedges_g_vs_baseline']) == pytest.approx(
      G['D'], rel=1e-5)
  assert table['accuracy', 'lr=0.0003']['beyond_seed_noise'] == 'False'
  assert table['accuracy', 'lr=0.01']['beyond_seed_noise'] == 'True'
  assert table['accuracy', 'lr=0.003']['is_best'] == 'True'
  assert table['accuracy', 'lr=0.003']['beyond_seed_noise'] == 'False'
  assert table['accuracy', 'lr=0.001']['beyond_seed_noise'] == ''
  assert table['loss', 'lr=0.001']['direction'] == 'min'

  for name in ('curves_accuracy.png', 'curves_loss.png', 'curves_train_loss.png'):
    assert (sweep_dir / name).stat().st_size > 1000
  def sessions():
    return sorted(p.name for p in (sweep_dir / 'hparams').iterdir() if p.is_dir())

  assert len(sessions()) == 12 and 'lr=0.003__seed=3' not in sessions()  # Done points only.
  tags = event_tags(next((sweep_dir / 'hparams' / 'lr=0.003__seed=0').glob('events.*')))
  assert tags['_hparams_/session_start_info'] == 'hparams'  # What TensorBoard's HParams tab reads.
  assert 'hparam/final_accuracy' in tags and 'hparam/best_loss' in tags
  before = sessions()
  report.write_report(str(sweep_dir))  # Again: HParams are rewritten, not duplicated.
  assert sessions() == before


def test_report_infers_settings_without_manifest(tmp_path):
  for setting in 'AB':
    for seed in (0, 1):
      write_run(tmp_path, f'{setting}{seed}', setting, seed, FINALS[setting][seed])
  out = report.write_report(str(tmp_path))
  settings = {r['setting'] for r in out['rows']}
  assert settings == {'learning_rate=0.001', 'learning_rate=0.003'}
  assert all(r['final'].n == 2 for r in out['rows'])


def test_report_on_a_folder_without_runs_fails(tmp_path):
  with pytest.raises(ConfigError, match='No runs'):
    report.write_report(str(tmp_path))
  result = run_launch(['--mode=report', f'--workdir={tmp_path}'])  # No --config needed.
  assert result.returncode == 2 and 'error: No runs in' in result.stderr
