"""GLUE SST-2 from its three TSVs in a manual dir (TFDS name `sst2`).

TFDS's own `glue/sst2` wants `SST-2.zip` by checksum, which we do not have; the TSVs are the
zip's contents byte for byte (see ../shared/data/README.md). Splits: train (67,349 phrases),
validation (GLUE dev, 872 sentences), test (1,821 sentences, label -1: GLUE keeps them private).
`idx` is the row number in the file, so the file order can be restored (TFDS shuffles by key).
"""

from __future__ import annotations

import csv
import io

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

FILES = {'train': 'train.tsv', 'validation': 'dev.tsv', 'test': 'test.tsv'}


class Sst2(tfds.core.GeneratorBasedBuilder):
  """Binary sentiment of movie-review sentences and phrases (1 = positive)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'GLUE SST-2 TSVs read from a manual dir.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Put the GLUE SST-2 files train.tsv, dev.tsv and test.tsv (from SST-2.zip) in the manual '
      'dir (--config.data.manual_dir).')

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'idx': tfds.features.Scalar(dtype=np.int32),
            'sentence': tfds.features.Text(),
            'label': tfds.features.ClassLabel(names=['negative', 'positive']),
        }),
        supervised_keys=('sentence', 'label'),
        homepage='https://gluebenchmark.com/tasks')

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = epath.Path(dl_manager.manual_dir)
    return {split: self._generate_examples(root / name) for split, name in FILES.items()}

  def _generate_examples(self, path: epath.Path):
    # The text has no quote characters (PTB `` and ''); QUOTE_NONE splits on tabs only.
    text = io.StringIO(path.read_text(encoding='utf-8'), newline='')
    for i, row in enumerate(csv.DictReader(text, delimiter='\t', quoting=csv.QUOTE_NONE)):
      yield i, {'idx': i, 'sentence': row['sentence'], 'label': int(row.get('label', -1))}
