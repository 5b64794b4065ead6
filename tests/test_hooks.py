"""research/hooks.py: an LM evaluation names its bits for what a token is (characters or not), and
bits per byte, where the data counts bytes, is the figure that compares across tokenizers."""

import math
import types

import numpy as np
import pytest

from research import hooks
from research.data.spec import Dataset, Meta
from research.data.tokenizers import CharVocab, SentencePiece

SUMS = {'loss_sum': np.float32(12.0), 'weight_sum': np.float32(6.0),
        'correct_sum': np.float32(3.0), 'bytes_sum': np.float32(15.0)}


def evaluate(tokenizer):
  dataset = Dataset(train_batch=None, eval_batches=lambda: iter([{}, {}]), num_eval_examples=2,
                    meta=Meta(task='lm', vocab_size=8, block_size=4), tokenizer=tokenizer)
  layout = types.SimpleNamespace(put_batch=lambda batch: batch)
  return hooks.evaluate(lambda params, batch: dict(SUMS), None, dataset, layout)


def test_bits_per_char_only_when_the_tokens_are_characters():
  chars = evaluate(CharVocab(tuple('abcdefgh')))
  pieces = evaluate(SentencePiece.train(['to be or not to be\n' * 50], 12))
  none = evaluate(None)
  loss = 24.0 / 12.0  # Two batches of the same sums.
  assert chars['bits_per_char'] == pytest.approx(loss / math.log(2))
  assert 'bits_per_token' not in chars
  for out in (pieces, none):
    assert 'bits_per_char' not in out
    assert out['bits_per_token'] == pytest.approx(loss / math.log(2))
  for out in (chars, pieces, none):  # The same numbers whatever the tokenizer.
    assert out['loss'] == loss and out['perplexity'] == pytest.approx(math.exp(loss))
    assert out['bits_per_byte'] == pytest.approx(24.0 / math.log(2) / 30.0)
