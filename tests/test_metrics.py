"""research/metrics.py: macro precision/recall/F1 (sklearn's convention, by hand), metric lines,
and the exact-resume bookkeeping (metrics.jsonl cut back to a checkpoint, pending metrics).

Expected values are worked out by hand (sklearn is not installed): per class, precision = TP /
column sum, recall = TP / row sum, F1 = 2TP / (row sum + column sum); a 0/0 scores 0 (sklearn's
default zero_division); classes absent from both labels and predictions are left out.
"""

import json
import math

import jax.numpy as jnp
import numpy as np

from research import metrics
from research.metrics import MetricWriter, classification_report


def report_of(rows):
  return classification_report(np.array(rows, dtype=np.float32))


def assert_report(rows, precision, recall, f1):
  got = report_of(rows)
  np.testing.assert_allclose([got['macro_precision'], got['macro_recall'], got['macro_f1']],
                             [precision, recall, f1], rtol=1e-6)


def test_full_two_class_matrix():
  # TP (3, 4); column sums (3, 5); row sums (4, 4).
  # precision (3/3, 4/5), recall (3/4, 4/4), F1 (6/(4+3), 8/(4+5)).
  assert_report([[3, 1], [0, 4]], (1.0 + 0.8) / 2, (0.75 + 1.0) / 2, (6 / 7 + 8 / 9) / 2)


def test_a_class_absent_from_labels_and_predictions_is_left_out():
  # Class 2 has an all-zero row and column: the average is over classes 0 and 1 only, so the
  # result equals the two-class matrix above (the old code divided by 3: precision 0.6).
  assert_report([[3, 1, 0], [0, 4, 0], [0, 0, 0]], (1.0 + 0.8) / 2, (0.75 + 1.0) / 2,
                (6 / 7 + 8 / 9) / 2)
  # Perfect predictions stay perfect whatever the class count (the old code gave 2/3).
  assert_report([[5, 0, 0], [0, 0, 0], [0, 0, 2]], 1.0, 1.0, 1.0)


def test_a_never_predicted_class_scores_zero_and_counts():
  # Class 2 has 2 true examples, none predicted. TP (2, 3, 0); column sums (4, 5, 0);
  # row sums (3, 4, 2).
  # precision (2/4, 3/5, 0/0 -> 0) = 1.1 / 3
  # recall    (2/3, 3/4, 0/2)      = (17/12) / 3 = 17/36
  # F1        (4/(3+4), 6/(4+5), 0/(2+0)) = (4/7 + 2/3) / 3 = 26/63
  assert_report([[2, 1, 0], [1, 3, 0], [1, 1, 0]], 1.1 / 3, 17 / 36, 26 / 63)


def test_a_class_predicted_but_never_in_the_labels_scores_zero_and_counts():
  # Class 2 was predicted once and never occurs. TP (2, 3, 0); column sums (2, 3, 1);
  # row sums (3, 3, 0).
  # precision (2/2, 3/3, 0/1) = 2/3; recall (2/3, 3/3, 0/0 -> 0) = 5/9
  # F1 (4/(3+2), 6/(3+3), 0/(0+1)) = (0.8 + 1) / 3 = 0.6
  assert_report([[2, 0, 1], [0, 3, 0], [0, 0, 0]], 2 / 3, 5 / 9, 0.6)


def test_an_empty_matrix_has_no_scores():
  assert all(math.isnan(v) for v in report_of([[0, 0], [0, 0]]).values())


def test_metric_lines_hold_floats_and_null_for_non_finite(tmp_path):
  writer = MetricWriter(str(tmp_path))
  writer.write(3, 'eval', {'loss': np.float32(0.5), 'macro_f1': math.nan})
  writer.close()
  line = json.loads((tmp_path / 'metrics.jsonl').read_text())
  assert line == {'step': 3, 'split': 'eval', 'loss': 0.5, 'macro_f1': None}


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
