"""MIAN factorial: which of the paper's settings keeps MIAN from using the behaviour signal?

  ./run.sh configs/mian_factorial.py                         # planted signal, 5 seeds, early stopping
  ./run.sh configs/mian_factorial.py:dataset=ml-100k         # MovieLens-100k (user demographics)
  ./run.sh configs/mian_factorial.py:quick                   # 2 seeds, 1 epoch: a smoke run

Three factors, every combination, everything else MIAN's §4.3 setting (configs/mian.py):
  MLP               32-8 (the paper's) | 200-80 (DIN's)
  GIM               sum (the paper's eq. 14-15, tokens projected to one width) | concat | off (the
                    representations concatenated into the MLP)
  behaviour input   full (IBIM's R_ibim and e_b, the mean behaviour embedding) | e_b only (no IBIM) |
                    IBIM only (no e_b) | none (the model sees no behaviour)
= 24 variants x seeds; Δ and p against the paper's MIAN (mlp32_8-gim_sum-full). On the planted signal
(configs/ablation_mian.py's: user and behaviour groups carry signal, context none) the behaviour
factor says whether a setting lets the behaviours in at all.
"""
import itertools

import ml_collections

from configs import ablation_mian, mian
from configs.common import Grid, apply_grid_arg, grid_identity, parse_grid_arg

MLPS = {"mlp32_8": (32, 8), "mlp200_80": (200, 80)}
GIMS = {"gim_sum": {"model.use_gim": True, "model.gim_combine": "sum"},
        "gim_concat": {"model.use_gim": True, "model.gim_combine": "concat"},
        "gim_off": {"model.use_gim": False}}
BEHAVIOUR_INPUTS = {"full": {"model.use_ibim": True, "model.use_behavior_mean": True},
                    "eb_only": {"model.use_ibim": False, "model.use_behavior_mean": True},
                    "ibim_only": {"model.use_ibim": True, "model.use_behavior_mean": False},
                    "none": {"model.use_ibim": False, "model.use_behavior_mean": False}}
REFERENCE = "mlp32_8-gim_sum-full"
DATASETS = ("synthetic", "ml-100k")


def variants() -> dict[str, dict]:
  """'<mlp>-<gim>-<behaviour input>' -> its overrides, for every combination of the three factors."""
  out = {}
  for (mlp, hidden), (gim, gim_fields), (behaviour, behaviour_fields) in itertools.product(
      MLPS.items(), GIMS.items(), BEHAVIOUR_INPUTS.items()):
    out[f"{mlp}-{gim}-{behaviour}"] = {"model.dnn.hidden": hidden, **gim_fields, **behaviour_fields}
  return out


def _config_and_grid(arg: str | None) -> tuple[ml_collections.ConfigDict, Grid]:
  a = parse_grid_arg(arg, DATASETS)
  c = apply_grid_arg(mian.get_config(), a)
  if a["dataset"] == "synthetic":
    c.dataset.update(ablation_mian.SYNTHETIC)
  names = list(variants())
  sections = {f"MLP {mlp}": tuple(n for n in names if n.startswith(mlp + "-")) for mlp in MLPS}
  return c, Grid(**grid_identity("mian_factorial", a), variants=variants(), reference=REFERENCE,
                 sections=sections, factorial=True, curves=(REFERENCE, "mlp200_80-gim_off-full", "mlp200_80-gim_off-none"))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return _config_and_grid(arg)[0]


def get_grid(arg: str | None = None) -> Grid:
  return _config_and_grid(arg)[1]
