"""The DIN paper's Figure 5: one user's behaviours and the activation weight each gets for a few
candidate items (a trained DIN run's best checkpoint).

  python -m experiments.din_attention workdirs/ablation_din/din/seed0 results/ablation_din/ml-latest-small/din_attention.png

The user is the first test user (in row order) with a full history; the candidates are that
row's item and items of random other test rows. Behaviours and candidates are labelled by their
genres and raw item id, so a reader can see whether weights follow the candidate's genres
(the paper: behaviours related to the candidate get higher weights).
"""
from __future__ import annotations

import pathlib
import sys

import jax
import numpy as np

import data_prep
from ctrjax.data import loader
from ctrjax.train import step as step_lib
from ctrjax.train import trainer
from experiments.plotting import plt, save_figure


def _vocab(dataset_path: pathlib.Path, table: str) -> list[str]:
  lines = (dataset_path / "vocab" / f"{table}.tsv").read_text().splitlines()
  return [line.split("\t", 1)[1] for line in lines]


def _label(item_id: int, genre_ids, items: list[str], genres: list[str]) -> str:
  names = [genres[g] for g in genre_ids if g > 1][:2]
  return f"{'|'.join(names) or '?'}  #{items[item_id]}"


def figure(workdir: str | pathlib.Path, out_path: str | pathlib.Path, num_candidates: int = 6,
           seed: int = 0) -> pathlib.Path:
  setup, state, _ = trainer.load_best(workdir, data_prep.prepare_for_workdir(workdir))
  if setup.config.model_name != "din":
    raise ValueError(f"{workdir}: model {setup.config.model_name!r}, expected 'din'")
  ds, split = setup.dataset, "test"
  key = ds.schema.behavior_key.name
  history = np.asarray(ds.columns[split][key])
  full = np.flatnonzero((history != 0).all(axis=1))
  if not len(full):
    raise ValueError(f"{setup.dataset_path}: no test row with a full history")
  others = np.random.default_rng(seed).choice(ds.num_rows(split), num_candidates - 1, replace=False)
  rows = np.concatenate([[full[0]], others])
  batch = loader.gather(ds, split, rows, np.ones(len(rows), np.float32))
  for name, values in batch["behavior"].items():       # every candidate meets the same user
    batch["behavior"][name] = np.repeat(values[:1], len(rows), axis=0)
  for group in ("user", "context"):
    for name, values in batch.get(group, {}).items():
      batch[group][name] = np.repeat(values[:1], len(rows), axis=0)
  unpacked = jax.jit(setup.layout.unpack)(setup.pack(batch))   # unsharded: 6 rows need not divide the devices
  variables = step_lib.model_variables(state, state.params)
  out = state.apply_fn(variables, unpacked, train=False)
  weights = np.asarray(jax.device_get(out["attention"]["din"]))
  probs = np.asarray(jax.nn.sigmoid(out["logit"]))

  items, genres = _vocab(setup.dataset_path, "item_id"), _vocab(setup.dataset_path, "genre")
  genre_field = next(f.name for f in ds.schema.group("behavior") if f.table == "genre")
  item_genre_field = next(f.name for f in ds.schema.group("item") if f.table == "genre")
  behaviours = [_label(i, g, items, genres) for i, g in zip(batch["behavior"][key][0],
                                                             batch["behavior"][genre_field][0])]
  candidates = [f"{_label(i, g, items, genres)}  (label {int(y)}, p {p:.2f})" for i, g, y, p in zip(
      batch["item"]["item_id"], batch["item"][item_genre_field], batch["label"], probs)]

  fig, ax = plt.subplots(figsize=(12, 0.5 * len(rows) + 4.5))
  im = ax.imshow(weights, cmap="magma", aspect="auto")
  ax.set_xticks(range(len(behaviours)), behaviours, rotation=75, ha="right", fontsize=7)
  ax.set_yticks(range(len(candidates)), candidates, fontsize=8)
  ax.set_xlabel("the user's behaviours, oldest -> newest")
  fig.colorbar(im, ax=ax, label="activation weight a_t")
  ax.set_title(f"DIN activation weights ({pathlib.Path(workdir)}, test user {int(ds.columns[split]['user'][rows[0]])})",
               fontsize=10)
  fig.tight_layout()
  out_path = save_figure(fig, out_path)
  print(f"wrote {out_path}")
  return out_path


if __name__ == "__main__":
  if len(sys.argv) != 3:
    sys.exit("usage: python -m experiments.din_attention WORKDIR OUT.png")
  figure(sys.argv[1], sys.argv[2])
