"""Tokenizers and dataset specs: saved files (old workdirs' included) load back by their kind, bad
files fail clearly, and a spec's view of a workdir is what training used."""

import json

import ml_collections
import numpy as np
import pytest
import tokenizers as hf_tokenizers
from helpers import SPEECHES as TEXT

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


def hf_tokenizer_file(path, model: str) -> str:
  """A tokenizer.json of `model` (BPE, WordPiece or Unigram) trained by `tokenizers` on TEXT."""
  models, trainers = hf_tokenizers.models, hf_tokenizers.trainers
  trainer = {'bpe': trainers.BpeTrainer, 'wordpiece': trainers.WordPieceTrainer,
             'unigram': trainers.UnigramTrainer}[model]
  kwargs = {'unk_token': '[UNK]'} if model != 'bpe' else {}
  tok = hf_tokenizers.Tokenizer({'bpe': models.BPE(unk_token='[UNK]'),
                                 'wordpiece': models.WordPiece(unk_token='[UNK]'),
                                 'unigram': models.Unigram()}[model])
  tok.pre_tokenizer = hf_tokenizers.pre_tokenizers.Whitespace()
  tok.train_from_iterator([TEXT], trainer(vocab_size=80, special_tokens=['[PAD]', '[UNK]'],
                                          **kwargs))
  file = str(path / f'{model}.json')
  tok.save(file)
  return file


@pytest.mark.parametrize('model', ['bpe', 'wordpiece', 'unigram'])
def test_a_tokenizer_json_file_is_chosen_by_path_and_saved_in_the_workdir(tmp_path, model):
  file = hf_tokenizer_file(tmp_path, model)
  tok = tokenizers.get_tokenizer(file, 'char', pytest.fail, workdir=str(tmp_path))
  assert tok.KIND == 'hf' and tok.vocab_size <= 80
  library = hf_tokenizers.Tokenizer.from_file(file)  # Ids exactly as the library's own.
  assert tok.encode('hear me, speak').tolist() == library.encode('hear me, speak').ids
  assert tok.decode([5, 7, 9]) == library.decode([5, 7, 9], skip_special_tokens=False)
  assert load_tokenizer(str(tmp_path / tokenizers.FILE)) == tok  # What a resumed run reads.
  assert load_tokenizer(file) == tok  # The file itself, as a corpus's data.corpus.tokenizer.


def test_the_tokenizer_choice_resolves_and_a_workdir_keeps_its_own(tmp_path):
  built = []

  def build(kind):
    built.append(kind)
    return (CharVocab.from_text(TEXT) if kind == 'char'
            else tokenizers.SentencePiece.train([TEXT], 40))

  workdir = str(tmp_path)
  sp = tokenizers.get_tokenizer('sentencepiece', 'char', build, workdir=workdir)
  assert built == ['sentencepiece'] and sp.KIND == 'sentencepiece'
  # Resumed: the saved one, not rebuilt, with or without the choice repeated.
  assert tokenizers.get_tokenizer('', 'char', build, workdir=workdir) == sp
  assert tokenizers.get_tokenizer('sentencepiece', 'char', build, workdir=workdir) == sp
  assert built == ['sentencepiece']
  with pytest.raises(ConfigError, match="has a 'sentencepiece' tokenizer but config.data."
                                        "tokenizer='char'"):
    tokenizers.get_tokenizer('char', 'char', build, workdir=workdir)
  # No workdir file: the dataset's own kind by default; an init_from run's tokenizer over both.
  assert tokenizers.get_tokenizer('', 'char', build, workdir=None) == CharVocab.from_text(TEXT)
  assert tokenizers.get_tokenizer('', 'char', build, workdir=None, fallback=sp) is sp


@pytest.mark.parametrize('choice, message', [
    ('sentencepice', "not a tokenizer kind.*Did you mean \"sentencepiece\""),
    ('word', "'word' does not suit this dataset"),
    ('vocab.txt', "not a tokenizer kind .* nor a file ending in \\['.json', '.model'\\]"),
    ('MISSING/x.model', "missing/x.model': no such file"),
    ('MISSING/tokenizer.json', 'no such file'),
    ('foo://bucket/x.model', 'no storage backend for foo://')])
def test_a_bad_tokenizer_choice_fails_before_any_data_is_read(tmp_path, choice, message):
  choice = choice.replace('MISSING', str(tmp_path / 'missing'))
  with pytest.raises(ConfigError, match=message):
    tokenizers.check_choice(choice, 'char')


def test_a_file_of_the_wrong_format_fails_clearly(tmp_path):
  (tmp_path / 'x.model').write_bytes(b'not a model')
  with pytest.raises(ConfigError, match='x.model is not a SentencePiece model'):
    tokenizers.SentencePiece.from_file(str(tmp_path / 'x.model'))
  (tmp_path / 'tokenizer.json').write_text('{"model": 3}')
  with pytest.raises(ConfigError, match='not a tokenizer.json the tokenizers library reads'):
    tokenizers.get_tokenizer(str(tmp_path / 'tokenizer.json'), 'word', pytest.fail, workdir=None)
