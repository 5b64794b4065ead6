"""Tokenizers and dataset specs: saved files (old workdirs' included) load back by their kind, bad
files fail clearly, and a spec's view of a workdir is what training used."""

import json

import ml_collections
import numpy as np
import pytest

from research import data
from research.data import generic, tokenizers
from research.data.spec import Meta
from research.data.tokenizers import CharVocab, WordVocab, load_tokenizer
from research.errors import ConfigError

# Files exactly as training wrote them before tokenizers.py existed (data/shakespeare.py's
# CharVocab.save, data/word_vocab.py's WordVocab.save).
OLD_CHAR_FILE = '{"type": "char", "chars": ["\\n", " ", "a", "b", "c"]}'
OLD_WORD_FILE = ('{"type": "word", "min_count": 2, '
                 '"tokens": ["[PAD]", "[UNK]", "[MASK]", "the", "film"]}')


def test_old_workdir_files_load_as_their_kind_and_save_byte_for_byte(tmp_path):
  for text, cls in ((OLD_CHAR_FILE, CharVocab), (OLD_WORD_FILE, WordVocab)):
    path = tmp_path / f'{cls.KIND}.json'
    path.write_text(text)
    tokenizer = load_tokenizer(str(path))
    assert type(tokenizer) is cls and tokenizer.KIND == json.loads(text)['type']
    tokenizer.save(str(tmp_path / 'again.json'))
    assert (tmp_path / 'again.json').read_text() == text
  chars = load_tokenizer(str(tmp_path / 'char.json'))
  assert chars.vocab_size == 5 and chars.decode(chars.encode('cab\n')) == 'cab\n'
  words = load_tokenizer(str(tmp_path / 'word.json'))
  np.testing.assert_array_equal(words.encode('the film , the'), [3, 4, tokenizers.UNK, 3])
  assert words.decode([3, 4, tokenizers.PAD]) == 'the film'


def test_bad_tokenizer_files_fail_clearly(tmp_path):
  with pytest.raises(ConfigError, match='vocab.json is missing'):
    load_tokenizer(str(tmp_path / 'vocab.json'))
  (tmp_path / 'bpe.json').write_text('{"type": "bpe", "merges": []}')
  with pytest.raises(ConfigError, match="unknown type 'bpe'"):
    load_tokenizer(str(tmp_path / 'bpe.json'))
  (tmp_path / 'vocab.json').write_text(OLD_WORD_FILE)
  with pytest.raises(ConfigError, match="holds a 'word' tokenizer; this dataset uses 'char'"):
    data.get_spec('tiny_shakespeare').load_tokenizer(str(tmp_path))
  with pytest.raises(ConfigError, match="outside the 5-symbol vocabulary: \\['z'\\]"):
    CharVocab.from_json(json.loads(OLD_CHAR_FILE)).encode('abz', 'prompt')


def test_text_inputs_for_inference_are_the_training_encoding():
  """The spec's encoding of raw texts (inference) equals WordVocab.encode_batch (training),
  padding and the cut at max_len included."""
  vocab = WordVocab.from_texts(['a b c a', 'b c d', 'a a'], min_count=1)
  texts = ['a b', 'c a d b a', '', 'zzz a']
  ids, mask, cut = vocab.encode_batch(texts, max_len=4)
  arrays = data.get_spec('sst2').encode_texts(vocab, texts, max_len=4)
  np.testing.assert_array_equal(arrays['inputs'], ids)
  np.testing.assert_array_equal(arrays['input_mask'], mask)
  assert cut == 1


@pytest.mark.parametrize('name, config, saved', [
    ('mnist1d', {}, None),
    ('tiny_shakespeare', {'block_size': 32}, OLD_CHAR_FILE),
    ('sst2', {'objective': 'classification', 'max_len': 64}, OLD_WORD_FILE),
    ('sst2', {'objective': 'mlm', 'max_len': 64}, OLD_WORD_FILE)])
def test_a_workdirs_meta_round_trips_through_json(tmp_path, name, config, saved):
  """What export writes into a manifest and inference reads back is the same Meta."""
  if saved:
    (tmp_path / tokenizers.FILE).write_text(saved)
  spec = data.get_spec(name)
  meta = spec.read_meta(ml_collections.ConfigDict({'data': config}), str(tmp_path))
  assert Meta.from_json(json.loads(json.dumps(meta.to_json()))) == meta
  assert spec.assets == ((tokenizers.FILE,) if saved else ())
  assert meta.task == ('mlm' if config.get('objective') == 'mlm'
                       else 'lm' if name == 'tiny_shakespeare' else 'classification')


def test_a_name_no_module_claims_is_read_generically():
  assert isinstance(data.get_spec('mnist2d'), generic.GenericSpec)
  assert data.get_spec('mnist1d') is data.DATASETS['mnist1d']
