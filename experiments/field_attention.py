"""Field-pair attention heat maps: AutoInt's Figure 7 and FESeq's Figures 5-6. For one test sample
and averaged over the test set, from a trained run's best checkpoint.

  python -m experiments.field_attention workdirs/ablation_autoint/autoint/seed0 results/ablation_autoint/criteo/autoint_attention.png
  python -m experiments.field_attention workdirs/ablation_feseq/causal/seed0 results/ablation_feseq/ml-100k/interaction_attention.png

Row m, column k is α_{m,k}: how much field m attends to field k when it builds its new
representation (rows sum to 1), heads averaged. Colours span each map's own range (1/F everywhere
would be uniform), and with at most 12 fields every cell is labelled with its weight.
AutoInt: interacting layer ``layer`` (0 = first). FESeq: its last input interacting layer at the
target token (the model returns only that one).
The sample is the test set's first positive row.
"""
from __future__ import annotations

import pathlib
import sys

import jax
import numpy as np

import data_prep
from ctrjax.layers.interaction import field_names
from ctrjax.train import step as step_lib
from ctrjax.train import trainer
from experiments.plotting import plt, save_figure

MODELS = ("autoint", "feseq")


def _pair_attention(model_name: str, out: dict, layer: int):
  """[B, F, F] head-mean field-pair attention of one model output."""
  if model_name == "autoint":
    return jax.numpy.mean(out["attention"][f"layer{layer}"], axis=1)
  return out["attention"]["interaction"]


def attention_maps(workdir: str | pathlib.Path, layer: int = 0):
  """(one test sample's [F, F] map, the test-set mean [F, F], field names, the sample's row)."""
  setup, state, _ = trainer.load_best(workdir, data_prep.prepare_for_workdir(workdir))
  name = setup.config.model_name
  if name not in MODELS:
    raise ValueError(f"{workdir}: model {name!r}, expected one of {MODELS}")
  variables = step_lib.model_variables(state, state.params)

  @jax.jit
  def maps_of(packed):
    return _pair_attention(name, state.apply_fn(variables, setup.layout.unpack(packed), train=False), layer)

  source = setup.source("test", train=False)
  maps = np.concatenate([np.asarray(maps_of(b)) for b in setup.batches(source)])[:source.num_rows]
  labels = np.asarray(setup.dataset.columns["test"][setup.dataset.schema.label.name])
  row = int(np.flatnonzero(labels == 1)[0]) if labels.any() else 0
  names = field_names(setup.dataset.schema) if name == "autoint" else setup.model.interaction_fields()
  return maps[row], maps.mean(axis=0), names, row


def figure(workdir, out_path, layer: int = 0) -> pathlib.Path:
  sample, mean, names, row = attention_maps(workdir, layer)
  size = 0.16 * len(names) + 2.5
  fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
  for ax, weights, title in ((axes[0], sample, f"test row {row} (label 1)"),
                             (axes[1], mean, "mean over the test set")):
    im = ax.imshow(weights, cmap="Blues")        # the map's own range: near-uniform maps still show
    if len(names) <= 12:
      for (m, k), w in np.ndenumerate(weights):
        ax.text(k, m, f"{w:.2f}", ha="center", va="center", fontsize=7,
                color="white" if w > weights.min() + 0.6 * np.ptp(weights) else "black")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046)
  fig.suptitle(f"field-pair attention (heads averaged): {workdir}", fontsize=10)
  fig.tight_layout()
  out_path = save_figure(fig, out_path)
  print(f"wrote {out_path}")
  return out_path


if __name__ == "__main__":
  if len(sys.argv) != 3:
    sys.exit("usage: python -m experiments.field_attention WORKDIR OUT.png")
  figure(sys.argv[1], sys.argv[2])
