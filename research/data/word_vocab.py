"""A word-level vocabulary for pre-tokenized text (split on whitespace), saved as JSON.

Ids 0-2 are reserved: [PAD] (padding, never attended), [UNK] (a word outside the vocabulary),
[MASK] (masked-LM corruption). Words follow by descending count, ties alphabetically, so the
same text and min count always give the same ids.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections.abc import Iterable

import numpy as np

PAD, UNK, MASK = 0, 1, 2
SPECIALS = ('[PAD]', '[UNK]', '[MASK]')


@dataclasses.dataclass(frozen=True)
class WordVocab:
  tokens: tuple[str, ...]  # SPECIALS first.
  min_count: int

  @classmethod
  def from_texts(cls, texts: Iterable[str], min_count: int) -> WordVocab:
    counts = collections.Counter(w for text in texts for w in text.split())
    words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    return cls(SPECIALS + tuple(words), min_count)

  @classmethod
  def load(cls, path: str) -> WordVocab:
    with open(path) as f:
      data = json.load(f)
    return cls(tuple(data['tokens']), data['min_count'])

  def save(self, path: str) -> None:
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      json.dump({'type': 'word', 'min_count': self.min_count, 'tokens': list(self.tokens)}, f)
    os.replace(tmp, path)  # Atomic: a resumed run never reads half a vocabulary.

  def __len__(self) -> int:
    return len(self.tokens)

  @property
  def ids(self) -> dict[str, int]:
    return {t: i for i, t in enumerate(self.tokens)}

  def encode_batch(self, texts: Iterable[str], max_len: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(ids_NxL right-padded with [PAD], 0/1 mask_NxL, number of texts cut at max_len)."""
    table = self.ids
    rows = [[table.get(w, UNK) for w in text.split()] for text in texts]
    ids = np.full((len(rows), max_len), PAD, np.int32)
    for i, row in enumerate(rows):
      ids[i, :min(len(row), max_len)] = row[:max_len]
    mask = (np.arange(max_len)[None, :] < np.array([len(r) for r in rows])[:, None])
    return ids, mask.astype(np.int32), sum(len(r) > max_len for r in rows)

  def decode(self, ids) -> str:
    return ' '.join(self.tokens[i] for i in np.asarray(ids).reshape(-1) if i != PAD)
