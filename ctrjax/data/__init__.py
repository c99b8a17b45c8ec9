"""Datasets: schema, streaming writer, validated memmapped loading, batch loader, and preparation."""
from __future__ import annotations

import pathlib

import jax
import ml_collections

MOVIELENS = ("ml-latest-small", "ml-100k", "ml-1m")


def _prepare(cfg: ml_collections.ConfigDict) -> pathlib.Path:
  if cfg.name == "path":
    if not cfg.path:
      raise ValueError("config.dataset.name='path' needs config.dataset.path (a prepared dataset directory)")
    return pathlib.Path(cfg.path)
  if cfg.name in MOVIELENS:
    from data_prep import movielens
    return movielens.prepare(cfg.name, cfg.out_root, raw_dir=cfg.raw_dir or None,
                             protocol=cfg.protocol, max_len=cfg.max_len, holdout=cfg.holdout,
                             sequence_fields=cfg.get("sequence_fields", "basic"))
  if cfg.name == "amazon":
    from data_prep import amazon
    options = cfg.get("amazon")
    return amazon.prepare(cfg.out_root, raw_dir=cfg.raw_dir or None, max_len=cfg.max_len,
                          **(options.to_dict() if options else {}))
  if cfg.name == "taobao":
    from data_prep import taobao
    options = cfg.get("taobao")   # e.g. config.dataset.taobao = {valid_start, test_start, history_fields}
    return taobao.prepare(cfg.out_root, raw_dir=cfg.raw_dir or None, max_len=cfg.max_len,
                          **(options.to_dict() if options else {}))
  if cfg.name in ("criteo", "avazu"):
    from data_prep import avazu, criteo
    options = cfg.get(cfg.name)   # e.g. config.dataset.criteo = {min_count, numeric, vocab_rows, seed}
    module = criteo if cfg.name == "criteo" else avazu
    return module.prepare(cfg.out_root, raw=cfg.raw_dir or None, **(options.to_dict() if options else {}))
  if cfg.name == "synthetic":
    from data_prep import synthetic
    return synthetic.prepare(cfg.out_root, **cfg.synthetic.to_dict())
  raise ValueError(f"config.dataset.name={cfg.name!r}; "
                   f"choose from {[*MOVIELENS, 'amazon', 'taobao', 'criteo', 'avazu', 'synthetic', 'path']}")


def prepare_dataset(cfg: ml_collections.ConfigDict) -> pathlib.Path:
  """Prepares (or reuses the cached) dataset named by ``config.dataset``; returns its directory.

  In a multi-process run process 0 prepares while the others wait, then they reuse its cache.
  """
  if jax.process_count() == 1:
    return _prepare(cfg)
  from jax.experimental import multihost_utils
  if jax.process_index() == 0:
    _prepare(cfg)
  multihost_utils.sync_global_devices("ctrjax_prepare_dataset")
  return _prepare(cfg)
