r"""Makes a large text corpus from a small one, for the larger-than-RAM benchmark (never commit it).

  python -m research.tools.make_corpus --out=/tmp/corpus_4gb --train_bytes=2200000000

Splits the source (Tiny Shakespeare by default) into paragraphs at blank lines; the last 10% of
them become OUT/eval.txt (once), the others are written again and again, each pass in a fresh
seeded order, into OUT/train-NNNNN.txt files of up to --file_bytes each until --train_bytes.
A character vocabulary stores each character as a uint16 token, so 2.2 GB of text makes 4.4 GB
of token shards.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from research.data.tfds_build import default_manual_dir


def paragraphs(text: bytes) -> list[bytes]:
  """Blank-line separated paragraphs, each ending with its blank line."""
  return [p + b'\n\n' for p in text.split(b'\n\n') if p]


def make_corpus(source: str, out: str, train_bytes: int, file_bytes: int = 1 << 30,
                seed: int = 0) -> list[str]:
  """Writes OUT/eval.txt and OUT/train-*.txt; returns the paths written."""
  with open(source, 'rb') as f:
    paras = paragraphs(f.read())
  n_eval = max(1, len(paras) // 10)
  train, held_out = paras[:-n_eval], paras[-n_eval:]
  os.makedirs(out, exist_ok=True)
  paths = [os.path.join(out, 'eval.txt')]
  with open(paths[0], 'wb') as f:
    f.write(b''.join(held_out))
  rng = np.random.default_rng(seed)
  written, f = 0, None
  while written < train_bytes:
    block = b''.join(train[i] for i in rng.permutation(len(train)))[:train_bytes - written]
    if f is None or f.tell() >= file_bytes:
      if f is not None:
        f.close()
      paths.append(os.path.join(out, f'train-{len(paths) - 1:05d}.txt'))
      f = open(paths[-1], 'wb')
    f.write(block)
    written += len(block)
  if f is not None:
    f.close()
  return paths


def main() -> None:
  shakespeare = default_manual_dir('tiny_shakespeare')
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True)
  parser.add_argument('--train_bytes', type=int, default=2_200_000_000)
  parser.add_argument('--file_bytes', type=int, default=1 << 30)
  parser.add_argument('--source', default=os.path.join(shakespeare, 'input.txt')
                      if shakespeare else None)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  for path in make_corpus(args.source, args.out, args.train_bytes, args.file_bytes, args.seed):
    print(f'{path}: {os.path.getsize(path):,} bytes')


if __name__ == '__main__':
  main()
