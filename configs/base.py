"""DIN's BaseModel (Embedding & MLP) on MovieLens ml-latest-small (bundled with the repo).

  ./run.sh configs/base.py                 # full run: up to 20 epochs, early stopping on valid AUC
  ./run.sh configs/base.py:quick           # 2 epochs, for a smoke test
  ./run.sh configs/base.py --config.model_name=lr --config.dataset.name=ml-100k
  ./run.sh tune configs/base.py --trials 20  # tuned on valid AUC over get_search_space, then 5 seeds

Prepares the dataset on first use (data/prepared/, cached), trains, reloads the best checkpoint
and prints test AUC, GAUC and logloss; everything lands in workdirs/base[_ARG]/.
"""
import ml_collections

import data_prep
from configs.common import DEFAULT_SEARCH_SPACE, SearchSpace, parse_arg
from ctrjax.models import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, quick=False)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.workdir = ""                       # default: workdirs/<config name>[_<arg>]

  # The chosen dataset and its options only, each declared with its default and meaning in
  # data_prep/__init__.py. --config.dataset.name=ml-100k|ml-1m|path keeps these options; a dataset with
  # other options: c.dataset = data_prep.switch_dataset(c.dataset, NAME) in a config.
  c.dataset = data_prep.dataset_config(
      "ml-latest-small",               # bundled with the repository
      protocol="din", max_len=30,
      holdout=5)                       # last 5 samples per user -> test, 5 before -> valid

  c.model_name = "base_model"          # a module of ctrjax/models/
  c.model = default_config("base_model")   # every field of the model, its defaults (ctrjax/models/)

  c.batch_size = 128
  c.eval_batch_size = 1024
  c.num_epochs = 20
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adam", learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=0.0,
      embeddings="dense"))             # dense (optax over all) | lazy_adam | lazy_adagrad | lazy_sgd:
                                       # update only a batch's embedding rows (ctrjax/train/lazy.py)
  c.early_stopping = ml_collections.ConfigDict(dict(metric="auc", mode="max", patience=2))
  c.lr_decay_on_plateau = 1.0          # multiply the LR by this after a non-improving epoch (1 = off)
  c.regularizer = ml_collections.ConfigDict(dict(
      mode="none",                     # none | mba (DIN eq. 4-7) | touched (= DiFacto's) | full_table
      weight=0.0,                      # lambda
      weight_convention="paper",       # paper: penalty lambda/2 * sum, gradient lambda * w_j / n_j (DIN
                                       # eq. 7) | no_half: lambda * sum (ctrjax before December 2026)
      filter_table="item_id",          # DIN §6.5 "Filter": keep the filter_top_k most frequent ids
      filter_top_k=0))                 # of this table, the rest -> OOV (0 = off)
  c.gauc_group = "user"                # meta field grouping GAUC ('' = no GAUC)
  c.num_devices = 0                    # 0 = every device (data parallel over all of them)
  c.embedding_sharding = "replicated"  # replicated | rows: every embedding table row-sharded over the
                                       # devices (tables larger than one device: docs/training.md)
  c.seeds_in_parallel = False          # grids: train a variant's seeds together, one vmapped program
                                       # on one device (ctrjax/train/seeds.py)

  c.checkpoint_every_steps = 1000
  c.log_every_steps = 50
  c.progress_bar = True
  c.steps_per_call = 1                 # train steps per jitted call (lax.scan; ctrjax/train/feed.py)
  c.loader = ml_collections.ConfigDict(dict(
      num_threads=2, prefetch=16,      # the host loader's read threads and prefetched batches
      placement="host",                # host | device (train split on the device(s)) | auto: device
      device_memory_share=0.25))       # when it fits this share of a device's memory (feed.py)
  c.debug = ml_collections.ConfigDict(dict(kill_at_step=-1))   # fault injection (tests)

  if a["quick"]:
    c.num_epochs = 2
  return c


def get_search_space(arg: str | None = None) -> SearchSpace:
  """./run.sh tune's space: learning rate, mini-batch-aware embedding L2, MLP dropout and widths."""
  return dict(DEFAULT_SEARCH_SPACE)
