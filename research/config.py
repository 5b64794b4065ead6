"""The config contract every experiment file starts from (docs/configs.md, "Config keys").

Experiment files call `base_config()` and change what they need; every key exists here, with its
one default, so a mistyped override fails with a suggestion instead of being silently added. The
models read `config.model.KEY` without a default of their own; the checks of those values are in
research/config_checks.py (`check_model`).
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_train_steps = 1000
  c.batch_size = 128  # Global, over all devices and processes.
  c.eval_batch_size = 1000
  c.log_every_steps = 100
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  c.grad_accum_steps = 1  # Micro-batches per optimizer step (grads summed; batch_size is global).
  c.nan_policy = 'stop'  # 'stop': raise, keep the last good checkpoint. 'skip': drop the update.
  c.progress_bar = True
  c.step_timeout_s = 0.0  # Watchdog: no step/eval/save for this long -> stacks + exit 5. 0 = off.
  # A run's workdir or checkpoint, or hf:PATH (a Hugging Face GPT-2 / BERT folder): start from
  # its params (research/transfer.py, research/hf).
  c.init_from = ''
  c.eval_at_start = False  # Also evaluate before the first update (e.g. a loaded checkpoint).

  c.model = model_config()

  c.data = ml_collections.ConfigDict()
  c.data.name = 'mnist'
  c.data.data_dir = ''  # TFDS data dir; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets.
  c.data.manual_dir = ''  # Source files for an offline build; '' = none (see data.download).
  c.data.train_split = 'train'
  c.data.eval_split = 'test'
  # Any other name than tiny_shakespeare, sst2, mnist1d, lm_corpus is read generically
  # (docs/data.md): a TFDS dataset ('name', 'name:version', 'name/config'), or the experiment's
  # own data below.
  c.data.inputs = 'image'  # The feature the model reads.
  c.data.targets = 'label'  # The class-id feature; '' = a language model over `inputs` text.
  # Ops run per batch, 'op(args)|op2' (research/data/preprocess.py); random ones train only.
  c.data.preprocess = 'value_range(0, 1)'
  # 'FILE' or 'FILE:FUNCTION' (default get_data): the experiment's own data, {split: arrays};
  # '' = the TFDS dataset data.name (research/data/own_data.py).
  c.data.get_data = ''
  c.data.block_size = 0  # Language models: the training window in tokens (set by each LM).
  c.data.num_classes = 0  # Own data: classes; 0 = the largest label + 1 (TFDS: its ClassLabel).
  # Let TFDS download an unbuilt dataset that has no manual dir (needs internet: offline it
  # would hang, so by default that is an error instead).
  c.data.download = False
  # LMs on a corpus: documents packed into windows with segment ids and per-document positions
  # (attention and loss stay inside a document); off: windows run across documents.
  c.data.packing = False
  # data.name='lm_corpus': a text corpus tokenized once into shards (research/data/lm_corpus.py).
  c.data.corpus = ml_collections.ConfigDict()
  c.data.corpus.train_files = ''  # Globs of UTF-8 text files, comma-separated.
  c.data.corpus.eval_files = ''  # '' = the documents in the last eval_fraction of the train files.
  c.data.corpus.eval_fraction = 0.1  # nanoGPT's 90/10 split (only when eval_files is '').
  c.data.corpus.separator = '\n\n'  # Ends a document (kept in it); '' = one document per file.
  c.data.corpus.cache_dir = ''  # Token shards; '' = <data_dir>/lm_corpus.
  c.data.corpus.shard_tokens = 1 << 28  # Tokens per shard (whole documents, so a bit more).
  c.data.corpus.verify = 'sha256'  # Shards checked at start: sha256 (every byte) | size.
  # 'memory': decode each split once into arrays (fast for small data); 'stream': read records
  # one by one through grain from an ArrayRecord build; 'auto': stream above 1 GiB on disk.
  c.data.source = 'auto'
  c.data.workers = 1  # Streaming: grain worker processes decoding batches (0 = in the trainer).
  # Text datasets (lm_corpus too): '' (the dataset's own: char or word) | char | word |
  # sentencepiece (trained on the train split) | PATH.model (SentencePiece) |
  # PATH/tokenizer.json (Hugging Face) | PATH/vocab.json (a run's saved tokenizer).
  c.data.tokenizer = ''
  c.data.vocab_size = 512  # data.tokenizer='sentencepiece': pieces to train.

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'adamw'  # adamw | sgd | adafactor | lion
  c.optimizer.learning_rate = 1e-3  # Peak.
  c.optimizer.schedule = 'warmup_cosine'  # constant | cosine | warmup_cosine | linear
  c.optimizer.warmup_steps = 0  # Linear from learning_rate / warmup_steps at the first update.
  c.optimizer.final_lr_ratio = 0.0  # Decay ends at learning_rate * final_lr_ratio.
  # Step where the decay ends (warmup included, as nanoGPT's lr_decay_iters); the LR stays final
  # after it. 0 = num_train_steps at the run's start; recorded, so extending a run keeps it.
  c.optimizer.decay_steps = 0
  # Decoupled; kernels and embedding tables only, never biases or norm scales (optimizers.py).
  c.optimizer.weight_decay = 0.0
  c.optimizer.grad_clip_norm = 0.0  # Global-norm clipping; 0 = off.
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.momentum = 0.9  # sgd only.
  c.optimizer.nesterov = False  # sgd only.
  c.optimizer.freeze = ()  # Param-path prefixes kept fixed, e.g. ('token_embed', 'stack').
  c.optimizer.encoder_lr_multiplier = 1.0  # Scales the lr of every param outside 'head'.

  c.parallel = ml_collections.ConfigDict()
  c.parallel.strategy = 'jit'  # jit (Mesh + NamedSharding) | pmap
  c.parallel.data = -1  # Mesh axis sizes; -1 = the remaining devices.
  c.parallel.fsdp = 1
  c.parallel.tensor = 1

  c.wandb = ml_collections.ConfigDict()  # Weights & Biases, optional (research/wandb_log.py).
  c.wandb.project = ''  # '' = off. metrics.jsonl and TensorBoard are always written.
  c.wandb.entity = ''
  c.wandb.group = ''  # Sweeps set it to the sweep folder's name.
  c.wandb.mode = ''  # '' = wandb's default (WANDB_MODE or online) | online | offline | disabled

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.keep = 2  # Newest N steps kept, plus the best by best_metric.
  c.checkpoint.best_metric = 'accuracy'  # An eval metric name; '' = none.
  c.checkpoint.best_mode = 'max'  # max | min
  c.checkpoint.async_save = True

  c.benchmark = ml_collections.ConfigDict()  # --mode=benchmark (research/tools/benchmark.py).
  c.benchmark.warmup_steps = 3  # Untimed steps after compiling (caches, allocator, autotuning).
  c.benchmark.timed_steps = 20
  c.benchmark.peak_flops = 0.0  # Per-device peak FLOP/s for MFU; 0 = the device table (GPU/TPU)
  #                               or a matmul measured in the same run (CPU).
  c.benchmark.loop_log_intervals = 4  # Full-loop timing: log intervals after the first; 0 = skip.
  c.benchmark.profile_steps = 0  # > 0: trace this many steps, print time by op kind.
  return c


def model_config() -> ml_collections.ConfigDict:
  """`config.model`: every model's keys with their defaults (docs/models.md has the options).

  A key a model does not use is ignored by it (an MLP run carries the Transformer keys unchanged).
  """
  m = ml_collections.ConfigDict()
  # mlp | transformer_lm | transformer_encoder | transformer_encoder_mlm (research/models/).
  m.name = 'mlp'
  m.dtype = 'float32'  # Compute dtype; float32 is exact everywhere, bfloat16 is the fast option.
  m.param_dtype = 'float32'  # Params (and optimizer state) stay f32 under bf16 compute.
  # Dropout on MLP hidden layers, Transformer embeddings, residual branches and the pooled
  # encoder output; off by default, each experiment sets its own rate.
  m.dropout_rate = 0.0

  # MLP (model.name = 'mlp').
  m.widths = (1024, 1024)  # Hidden layer sizes; two of 1024 is the MNIST recipe's.
  m.activation = 'relu'  # relu | gelu | silu | tanh; ReLU, the plain MLP baseline.

  # Transformer (LM and encoders). Shape: nanoGPT's CPU recipe, small enough to train on a CPU.
  m.num_layers = 4
  m.d_model = 128
  m.num_heads = 4  # Must divide d_model.
  m.num_kv_heads = 0  # 0 = num_heads (multi-head); fewer = grouped-query, must divide num_heads.
  m.d_ff = 0  # MLP hidden width; 0 = 4 * d_model, GPT-2's ratio.
  # Position table (and KV cache) size; 0 = the data's length: data.block_size for the LM, the
  # tokens or patches (+ 1 for [CLS]) for an encoder.
  m.max_len = 0
  # Dropout on attention probabilities; 0 keeps the fused attention path (dropout > 0 takes the
  # explicit softmax, which jax.nn.dot_product_attention lacks).
  m.attention_dropout_rate = 0.0
  m.norm = 'layernorm'  # layernorm | rmsnorm; LayerNorm, as GPT-2 and BERT.
  m.mlp = 'gelu'  # gelu | swiglu; exact GELU, as GPT-2 and BERT.
  m.positions = 'learned'  # learned | rotary; a learned table, as GPT-2, BERT and ViT.
  m.rotary_base = 10000.0  # RoPE's theta (positions='rotary' only); RoFormer's value.
  m.use_bias = False  # Biases in Dense and LayerNorm; off, as nanoGPT's (faster, no worse).
  # Std of the normal init of embeddings and kernels, GPT-2's; residual projections get
  # init_std / sqrt(2 * num_layers).
  m.init_std = 0.02
  # xla | cudnn: jax.nn.dot_product_attention's implementation. XLA runs on every backend; cuDNN
  # is the fused GPU kernel (NVIDIA GPU, bfloat16/float16, no attention dropout).
  m.attention_impl = 'xla'
  # Per-layer rematerialization: none | full | dots (save matmul outputs only). none is the
  # fastest while activations fit in memory.
  m.remat = 'none'
  # nn.scan over layers: one compiled layer body, so deep models compile faster; off because
  # unrolled layers ran faster on a CPU (docs/performance.md#speed-switches-compared).
  m.scan_layers = False
  # LayerNorm's epsilon (RMSNorm keeps 1e-6); GPT-2's 1e-5. BERT uses 1e-12 (its config.json).
  m.layernorm_epsilon = 1e-5
  # pre | post: norm before each residual branch with a final norm (GPT-2), or after each
  # residual sum with a norm on the embeddings and none at the end (BERT).
  m.norm_position = 'pre'
  m.gelu = 'exact'  # exact | tanh: the tanh approximation is GPT-2's gelu_new.
  m.type_vocab_size = 0  # Encoder: BERT's token-type (segment) embeddings; 0 = none.
  m.pooler = False  # Encoder classifier: BERT's dense + tanh on the pooled vector before the head.
  m.tie_embeddings = True  # LM head = the token embedding transposed, as GPT-2 (fewer params).
  m.pooling = 'cls'  # Encoder classifier: cls | mean; a [CLS] token, as BERT and ViT.
  # Encoder on images or signals: patch side length, must divide every spatial size; 0 = token
  # inputs (a dataset with a vocabulary).
  m.patch_size = 0
  return m


def complete_model_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`cfg` with the keys it lacks taken from `model_config()`: a test's partial section, or a
  config.json written before a key existed (the model then used the default it has today)."""
  merged = model_config().to_dict()
  merged.update(cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg))
  return ml_collections.ConfigDict(merged)
