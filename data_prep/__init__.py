"""Raw-dataset preparation: each module turns a public dataset into a ctrjax dataset directory; this
file is the registry that ``config.dataset`` names them through.

``config.dataset`` is ``dataset_config(name, **options)``: ``name``, the fields every dataset has
(``COMMON``) and the options of the chosen dataset, declared below with their defaults and meaning.
``prepare(config.dataset)`` calls ``data_prep.<module>.prepare(out_root, **options)`` (MovieLens:
``prepare(name, out_root, ...)``, its three datasets share one module) and returns the prepared
directory, cached under ``out_root`` by the module. A new dataset is one module whose ``prepare`` takes
its options as keywords, its option declarations and one line in ``DATASETS``; tests/test_registry.py
checks that the declarations match the ``prepare`` parameters.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import pathlib
from typing import Any, Callable, Mapping

import ml_collections

from ctrjax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Option:
  """A ``config.dataset`` option: its default (= the module's ``prepare`` default) and meaning."""
  default: Any
  doc: str


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A registered dataset: ``data_prep.<module>.prepare`` prepares it from ``options``."""
  module: str
  options: Mapping[str, Option]
  takes_name: bool = False       # prepare's first argument is the dataset name (one module, several datasets)

  def prepare_function(self, name: str) -> Callable[..., pathlib.Path]:
    """``prepare(out_root, **options)``. The module is imported only here, so that ``python -m
    data_prep.<module>`` does not find itself already imported by the package."""
    prepare = importlib.import_module(f"data_prep.{self.module}").prepare
    return functools.partial(prepare, name) if self.takes_name else prepare


# Every config.dataset has these besides ``name`` (a key of DATASETS, or 'path').
COMMON = {
    "out_root": Option("data/prepared", "prepared datasets are cached under it (relative: to the repository)"),
    "validate": Option(True, "check dtypes, shapes and id ranges on load"),
    "path": Option("", "with name='path': an already prepared dataset directory"),
}

MOVIELENS = {
    "raw_dir": Option("", "raw files ('' = the bundled ml-latest-small, or ../shared/data/movielens-*)"),
    "protocol": Option("din", "din: rating >= 4 positive; autoint: > 3 pos, < 3 neg, 3 dropped; autoint7: "
                              "AutoInt's 7-field form (no ids, random 80/10/10 split)"),
    "max_len": Option(30, "behaviours kept per sample (most recent)"),
    "holdout": Option(1, "last h samples per user -> test, h before -> valid; 1 = strict leave-one-out, "
                         "where GAUC is undefined (1 impression per user)"),
    "sequence_fields": Option("basic", "behaviour fields: basic (hist_item_id, hist_genres) | feseq "
                                       "(+ hist_hour, hist_weekday, hist_time_gap in minutes)"),
}
AMAZON = {
    "raw_dir": Option("", "reviews_<category>_5.json[.gz] and meta_<category>.json[.gz] ('' = "
                          "../shared/data/amazon)"),
    "category": Option("Electronics", "the 5-core category, a file-name part"),
    "max_len": Option(30, "behaviours kept per sample (most recent)"),
    "seed": Option(1234, "negative sampling seed (DIN's build_dataset.py)"),
    "on_corrupt": Option("skip", "skip: count corrupt lines | error: raise naming file and line"),
}
TAOBAO = {
    "raw_dir": Option("", "the four Tianchi tables raw_sample, ad_feature, user_profile, behavior_log "
                          "('' = ../shared/data/taobao-ad)"),
    "max_len": Option(50, "behaviours kept per sample (most recent)"),
    "valid_start": Option("2017-05-12", "impressions from this UTC+8 date (or 'YYYY-MM-DD hh:mm:ss') -> valid"),
    "test_start": Option("2017-05-13", "impressions from this UTC+8 date (or time) -> test"),
    "history_fields": Option(("cate", "brand", "btag", "hour", "weekday"),
                             "behaviour fields; DIN, DIEN and BST need ('cate', 'brand'), which have a "
                             "candidate field each"),
    "on_corrupt": Option("skip", "skip: count corrupt lines | error: raise naming file and line"),
}
TABULAR_SEED = Option(2018, "seed of the random 80/10/10 split (AutoInt's)")
VOCAB_ROWS = Option("train", "rows whose values are counted for min_count: train | all (AutoInt's script)")
CRITEO = {
    "raw_dir": Option("", "Kaggle train.txt, the file or its directory ('' = the first 10,000 lines in "
                          "../shared/data/criteo-kaggle-first10k)"),
    "min_count": Option(10, "categorical values seen fewer times -> one unknown id"),
    "numeric": Option("value", "I1..I13: value (a vector scaled by the value, AutoInt's) | bucket (ids)"),
    "vocab_rows": VOCAB_ROWS,
    "seed": TABULAR_SEED,
}
AVAZU = {
    "raw_dir": Option("", "Kaggle train / train.csv, the file or its directory ('' = DeepCTR's 100-row "
                          "sample in ../shared/data/avazu-samples)"),
    "min_count": Option(5, "categorical values seen fewer times -> one unknown id"),
    "vocab_rows": VOCAB_ROWS,
    "seed": TABULAR_SEED,
}
SYNTHETIC = {
    "num_rows": Option(100_000, "rows, split contiguously by split"),
    "num_items": Option(10_000, "items, ids by decreasing popularity"),
    "num_users": Option(2_000, "users"),
    "num_item_clusters": Option(20, "latent item clusters"),
    "num_segments": Option(10, "user segments"),
    "max_len": Option(30, "longest behaviour history (lengths uniform in [0, max_len])"),
    "num_contexts": Option(24, "context (hour) values"),
    "signal_user": Option(1.0, "weight of the user x item-cluster component of the logit"),
    "signal_context": Option(1.0, "weight of the context x item-cluster component"),
    "signal_behavior": Option(1.0, "weight of the behaviour component (share of same-cluster behaviours)"),
    "noise": Option(1.0, "std of the logit's Gaussian noise"),
    "bias": Option(-1.0, "logit bias"),
    "zipf_a": Option(1.1, "within-cluster popularity exponent"),
    "split": Option((0.8, 0.1, 0.1), "train, valid, test fractions"),
    "seed": Option(0, "the world and the rows"),
}
SPEC = {
    "spec": Option("", "a dataset spec file (TOML; relative: to the repository): raw CSV/Parquet files, "
                       "label, columns, split, behaviours (docs/your_data.md)"),
}

DATASETS: dict[str, Dataset] = {
    **{name: Dataset("movielens", MOVIELENS, takes_name=True)
       for name in ("ml-latest-small", "ml-100k", "ml-1m")},
    "amazon": Dataset("amazon", AMAZON),
    "taobao": Dataset("taobao", TAOBAO),
    "criteo": Dataset("criteo", CRITEO),
    "avazu": Dataset("avazu", AVAZU),
    "synthetic": Dataset("synthetic", SYNTHETIC),
    "spec": Dataset("spec", SPEC),
}
PATH = "path"   # name of an already prepared directory: config.dataset.path


def _options(name: str) -> Mapping[str, Option]:
  if name == PATH:
    return {}
  if name not in DATASETS:
    raise ValueError(f"config.dataset.name={name!r}; choose from {[*DATASETS, PATH]}")
  return DATASETS[name].options


def dataset_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """``config.dataset`` for ``name``: the common fields and that dataset's options, defaults
  replaced by ``overrides`` (an option the dataset does not take is a ValueError)."""
  config = ml_collections.ConfigDict({"name": name, **{k: o.default for k, o in COMMON.items()},
                                      **{k: o.default for k, o in _options(name).items()}})
  _check_keys(config.name, overrides)
  config.update(overrides)
  return config


def switch_dataset(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """``config`` (a ``config.dataset``) for dataset ``name``: the common fields and the options both
  datasets take keep their values (all of them within one module), the rest are ``name``'s defaults."""
  out = dataset_config(name)
  out.update({k: v for k, v in config.items() if k != "name" and k in out})
  return out


def _check_keys(name: str, keys) -> None:
  options = _options(name)
  unknown = sorted(k for k in keys if k != "name" and k not in COMMON and k not in options)
  if unknown:
    others = f" (nor {unknown[1:]})" if len(unknown) > 1 else ""
    raise ValueError(f"config.dataset.{unknown[0]}: dataset {name!r} takes no option {unknown[0]!r}{others}; "
                     f"its options: {sorted(options)}, and {['name', *COMMON]} (a config written for "
                     f"another dataset moves to this one with data_prep.switch_dataset)")


def _prepare(config: ml_collections.ConfigDict) -> pathlib.Path:
  if config.name == PATH:   # other datasets' options are ignored: --config.dataset.name=path works on any config
    if not config.get("path"):
      raise ValueError("config.dataset.name='path' needs config.dataset.path (a prepared dataset directory)")
    return pathlib.Path(config.path)
  _check_keys(config.name, config.keys())
  dataset = DATASETS[config.name]
  options = {k: config.get(k, o.default) for k, o in dataset.options.items()}
  return dataset.prepare_function(config.name)(config.get("out_root", COMMON["out_root"].default), **options)


def prepare(config: ml_collections.ConfigDict) -> pathlib.Path:
  """Prepares (or reuses the cache of) the dataset ``config`` (a ``config.dataset``) names; returns its
  directory. An unknown name or option is a ValueError naming the field and the valid choices.

  In a multi-process run process 0 prepares while the others wait, then they reuse its cache.
  """
  import jax   # here, not at the top: every config imports this package
  if jax.process_count() == 1:
    return _prepare(config)
  from jax.experimental import multihost_utils
  if jax.process_index() == 0:
    _prepare(config)
  multihost_utils.sync_global_devices("ctrjax_prepare_dataset")
  return _prepare(config)


def prepare_for_workdir(workdir: str | pathlib.Path) -> pathlib.Path:
  """The prepared dataset of the run in ``workdir`` (from its config.json; prepared if not cached)."""
  config_path = pathlib.Path(workdir) / "config.json"
  if not config_path.is_file():
    raise UserError(f"{workdir}: no config.json (not a ctrjax workdir)")
  return prepare(ml_collections.ConfigDict(json.loads(config_path.read_text())["dataset"]))
