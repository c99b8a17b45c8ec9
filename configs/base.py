"""DIN's BaseModel (Embedding & MLP) on MovieLens ml-latest-small (bundled with the repo).

  ./run.sh configs/base.py                 # full run: up to 20 epochs, early stopping on valid AUC
  ./run.sh configs/base.py:quick           # 2 epochs, for a smoke test
  ./run.sh configs/base.py --config.model_name=lr --config.dataset.name=ml-100k

Prepares the dataset on first use (data/prepared/, cached), trains, reloads the best checkpoint
and prints test AUC, GAUC and logloss; everything lands in workdirs/base[_ARG]/.
"""
import ml_collections

from ctrjax.models import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.workdir = ""                       # default: workdirs/<config name>[_<arg>]

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "ml-latest-small"   # ml-latest-small | ml-100k | ml-1m | synthetic | amazon | criteo | avazu | taobao | path
  c.dataset.protocol = "din"           # din: rating >= 4 positive; autoint: > 3 pos, < 3 neg, 3 dropped;
                                       # autoint7: AutoInt's 7-field form (no ids, random 80/10/10 split)
  c.dataset.max_len = 30               # behaviours kept per sample (most recent)
  c.dataset.holdout = 5                # last 5 samples per user -> test, 5 before -> valid; 1 = strict
                                       # leave-one-out, where GAUC is undefined (1 impression per user)
  c.dataset.sequence_fields = "basic"  # MovieLens behaviour fields: basic (hist_item_id, hist_genres) |
                                       # feseq (+ hist_hour, hist_weekday, hist_time_gap in minutes)
  c.dataset.raw_dir = ""               # raw files (MovieLens default: bundled / ../shared)
  c.dataset.out_root = "data/prepared"
  c.dataset.path = ""                  # with name='path': an already prepared dataset directory
  c.dataset.validate = True            # check dtypes, shapes and id ranges on load
  c.dataset.synthetic = ml_collections.ConfigDict(dict(num_rows=100_000, num_items=10_000, seed=0))
  c.dataset.amazon = ml_collections.ConfigDict(dict(   # name='amazon': reviews_<category>_5.json[.gz]
      category="Electronics", seed=1234, on_corrupt="skip"))   # in raw_dir (data_prep/amazon.py)
  c.dataset.criteo = ml_collections.ConfigDict(dict(   # name='criteo': Kaggle train.txt (raw_dir: file
      min_count=10, numeric="value", vocab_rows="train", seed=2018))   # or dir; default: ../shared 10k)
  c.dataset.avazu = ml_collections.ConfigDict(dict(    # name='avazu' (data_prep/avazu.py)
      min_count=5, vocab_rows="train", seed=2018))
  c.dataset.taobao = ml_collections.ConfigDict(dict(   # name='taobao': the four Tianchi tables in raw_dir
      valid_start="2017-05-12", test_start="2017-05-13",   # UTC+8 (data_prep/taobao.py); max_len 50 there
      history_fields=("cate", "brand", "btag", "hour", "weekday"), on_corrupt="skip"))

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
      filter_table="item_id",          # DIN §6.5 "Filter": keep the filter_top_k most frequent ids
      filter_top_k=0))                 # of this table, the rest -> OOV (0 = off)
  c.gauc_group = "user"                # meta field grouping GAUC ('' = no GAUC)
  c.num_devices = 0                    # 0 = every device (data parallel over all of them)
  c.seeds_in_parallel = False          # grids: train a variant's seeds together, one vmapped program
                                       # on one device (ctrjax/train/seeds.py)

  c.checkpoint_every_steps = 1000
  c.log_every_steps = 50
  c.progress_bar = True
  c.loader = ml_collections.ConfigDict(dict(num_threads=2, prefetch=16))
  c.debug = ml_collections.ConfigDict(dict(kill_at_step=-1))   # fault injection (tests)

  if arg == "quick":
    c.num_epochs = 2
  elif arg:
    raise ValueError(f"configs/base.py: unknown argument {arg!r}; known: 'quick'")
  return c
