"""The DIN paper's regularisation study (§6.5, Fig. 4, Table 4) on BaseModel as one grid.

  ./run.sh configs/ablation_din_reg.py                  # ml-latest-small, 5 seeds
  ./run.sh configs/ablation_din_reg.py:dataset=ml-100k
  ./run.sh configs/ablation_din_reg.py:quick
  ./run.sh configs/ablation_din_reg.py:tuned,dataset=ml-100k   # each variant tuned alike (not its regulariser)

Variants (all BaseModel with item ids, configs/base.py):
  none     no regularisation;
  dropout  50% of the feature ids of each sample discarded in training (model.id_dropout);
  filter   only the FILTER_TOP_K most frequent item ids kept, the rest -> OOV (the paper keeps
           the top 20M of 0.6B goods ids; on MovieLens's ~10k movies we keep the top 1,000);
  difacto  DiFacto's frequency-adaptive L2: every row a batch touches penalised with weight 1
           (regularizer.mode='touched'), so frequent ids are penalised in more batches;
  mba      mini-batch aware L2 (DIN eq. 4-7): touched rows weighted by 1 / their training count.
λ = 0.01 for difacto and mba, the paper's value (searched on Alibaba data only).
Figure 4's curves (validation AUC/logloss per epoch) for every variant; Table 4's RelaImpr
against 'none'.
"""
import ml_collections

from configs import base
from configs.common import Grid, SearchSpace, apply_grid_arg, grid_identity, parse_grid_arg

DATASETS = ("ml-latest-small", "ml-100k")
FILTER_TOP_K = 1_000
WEIGHT = 0.01
VARIANTS = {
    "none": {},
    "dropout": {"model.id_dropout": 0.5},
    "filter": {"regularizer.filter_top_k": FILTER_TOP_K},
    "difacto": {"regularizer.mode": "touched", "regularizer.weight": WEIGHT},
    "mba": {"regularizer.mode": "mba", "regularizer.weight": WEIGHT},
}


def _config_and_grid(arg: str | None) -> tuple[ml_collections.ConfigDict, Grid]:
  """The run config and the grid of the argument (parsed once for both)."""
  a = parse_grid_arg(arg, DATASETS)
  return apply_grid_arg(base.get_config(), a), Grid(
      **grid_identity("ablation_din_reg", a),
      variants=VARIANTS,
      reference="none",
      curves=tuple(VARIANTS))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return _config_and_grid(arg)[0]


def get_grid(arg: str | None = None) -> Grid:
  return _config_and_grid(arg)[1]


def get_search_space(arg: str | None = None) -> SearchSpace:
  """The protocol 'tuned': base's space less the regulariser, which is what this grid compares
  (each variant keeps its own): learning rate, MLP dropout and widths."""
  return {k: d for k, d in base.get_search_space().items() if not k.startswith("regularizer.")}
