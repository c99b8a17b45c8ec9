"""The DIN paper's Table 3 model comparison as one grid: LR, BaseModel, Wide&Deep, PNN, DeepFM,
DIN and DIN with Dice, plus the later DIEN and BST (configs/dien.py, configs/bst.py), every model ×
5 seeds, RelaImpr on GAUC against BaseModel (paper eq. 11).

  ./run.sh configs/ablation_din.py                      # ml-latest-small, 5 seeds, early stopping
  ./run.sh configs/ablation_din.py:dataset=ml-100k
  ./run.sh configs/ablation_din.py:quick                # 2 seeds, 1 epoch: a smoke run
  ./run.sh configs/ablation_din.py:tuned,dataset=ml-100k --trials 8   # every model tuned alike

Shared setting (configs/base.py): embedding 16 per field, behaviours sum-pooled (DIN: attention),
prediction MLP 200-80 PReLU (Dice for DIN with Dice), Adam 1e-3, batch 128, early stopping on
valid AUC, no regularisation (the DIN paper §6.5: its public datasets do not overfit).
Runs in workdirs/ablation_din[_ARG]/<model>/seed<k>; tables and figures in
results/ablation_din[_quick]/<dataset>/.
"""
import ml_collections

from configs import base, bst, dien
from configs.common import Grid, SearchSpace, apply_grid_arg, grid_identity, parse_grid_arg
from ctrjax.models import default_config

DATASETS = ("ml-latest-small", "ml-100k")


def _m(name: str, **overrides) -> dict:
  """Variant: model ``name`` with the fields that differ from its defaults."""
  return {"model_name": name, "model": default_config(name, **overrides).to_dict()}


VARIANTS = {
    "lr": _m("lr"),
    "base_model": _m("base_model"),
    "wide_deep": _m("wide_deep"),
    "pnn": _m("pnn"),
    "deepfm": _m("deepfm"),
    "din": _m("din"),
    "din_dice": _m("din", dnn={"activation": "dice"}),
    "dien": {"model_name": "dien", "model": dien.get_config().model.to_dict()},
    "bst": {"model_name": "bst", "model": bst.get_config().model.to_dict()},
}


def _config_and_grid(arg: str | None) -> tuple[ml_collections.ConfigDict, Grid]:
  """The run config and the grid of the argument (parsed once for both)."""
  a = parse_grid_arg(arg, DATASETS)
  return apply_grid_arg(base.get_config(), a), Grid(
      **grid_identity("ablation_din", a),
      variants=VARIANTS,
      reference="base_model",
      relaimpr_metric="gauc",
      sections={"DIN Table 3": ("lr", "base_model", "wide_deep", "pnn", "deepfm", "din", "din_dice"),
                "Sequence models after DIN": ("base_model", "din", "dien", "bst")},
      curves=("base_model", "din", "din_dice"))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return _config_and_grid(arg)[0]


def get_grid(arg: str | None = None) -> Grid:
  return _config_and_grid(arg)[1]


def get_search_space(arg: str | None = None) -> SearchSpace:
  """The protocol 'tuned': one space for every model (configs/base.py's), less the keys a model's
  config lacks (LR: the MLP's)."""
  return base.get_search_space()
