"""MIAN's ablations (paper Tables 3 and 4) as one grid: every variant x seed, then tables and figures.

  ./run.sh configs/ablation_mian.py:quick                        # 2 seeds, 1 epoch: a smoke run
  ./run.sh configs/ablation_mian.py                              # 5 seeds, early stopping
  ./run.sh configs/ablation_mian.py:dataset=ml-100k              # with user demographics
  ./run.sh configs/ablation_mian.py:dataset=synthetic            # planted signal: user + behaviour only
  ./run.sh configs/ablation_mian.py:quick,dataset=synthetic
  ./run.sh configs/ablation_mian.py:tuned,dataset=ml-100k --trials 8   # every variant tuned alike

Runs land in workdirs/ablation_mian[_ARG]/<variant>/seed<k> (finished runs are skipped, interrupted
ones resume); tables and figures in results/ablation_mian[_quick]/<dataset>/.
Table 3: full; w/o IUIM; w/o ICIM; w/o IBIM; w/o GIM; w/o IUIM & ICIM.
Table 4: the IBIM encoder: Pre-LN Transformer (= full), post-LN (original) Transformer, none
(no Transformer and no position embedding: the behaviour embeddings go straight to the pooling).
"""
import ml_collections

from configs import mian
from configs.common import Grid, SearchSpace, apply_grid_arg, grid_identity, parse_grid_arg
from ctrjax.models import default_config

VARIANTS = {
    "full": {},
    "no_iuim": {"model.use_iuim": False},
    "no_icim": {"model.use_icim": False},
    "no_ibim": {"model.use_ibim": False},
    "no_gim": {"model.use_gim": False},
    "no_iuim_icim": {"model.use_iuim": False, "model.use_icim": False},
    "post_ln": {"model.ibim_encoder": "post_ln"},
    "no_transformer": {"model.ibim_encoder": "none", "model.position_embedding": False},
}
# On synthetic only (not rows of the paper): without IBIM the GIM still sees e_b, the mean of the
# behaviour embeddings; no_behaviour_group removes that too, so the model sees no behaviour at all.
# din is DIN's model (configs/din.py) under the same training settings: can the behaviour signal be
# learnt from these 80k rows at all?
SYNTHETIC_DIAGNOSTICS = {
    "no_behaviour_group": {"model.use_ibim": False, "model.use_behavior_mean": False},
    "din": {"model_name": "din", "model": default_config("din").to_dict()},
}
DATASETS = ("ml-latest-small", "ml-100k", "synthetic")
# Planted signal in the user and behaviour groups, none in the context group: removing ICIM should
# cost nothing, removing IUIM or IBIM should cost AUC. A small world (2,000 items, 1,000 users:
# ~40 training rows per item and per user) so that 80k training rows can learn it; with 10,000
# items and 2,000 users MIAN reached AUC 0.63 of the oracle's 0.78 and no ablation was significant.
SYNTHETIC = dict(num_rows=100_000, num_items=2_000, num_users=1_000, signal_user=2.0,
                 signal_context=0.0, signal_behavior=2.0, seed=0)
GIM_TOKENS = ("e_i (item)", "e_c (context)", "e_b (behaviour)", "e_u (user)", "R_ibim", "R_iuim", "R_icim")


def _config_and_grid(arg: str | None) -> tuple[ml_collections.ConfigDict, Grid]:
  """The run config and the grid of the argument (parsed once for both)."""
  a = parse_grid_arg(arg, DATASETS)
  c = mian.get_config()
  variants, sections = dict(VARIANTS), {
      "Table 3: modules": ("full", "no_iuim", "no_icim", "no_ibim", "no_gim", "no_iuim_icim"),
      "Table 4: IBIM encoder": ("full", "post_ln", "no_transformer")}
  c = apply_grid_arg(c, a)
  if a["dataset"] == "synthetic":   # does the model use the planted behaviour signal at all?
    c.dataset.update(SYNTHETIC)
    variants.update(SYNTHETIC_DIAGNOSTICS)
    sections["Diagnostic: behaviour group"] = ("full", "no_ibim", *SYNTHETIC_DIAGNOSTICS)
  return c, Grid(
      **grid_identity("ablation_mian", a),
      variants=variants,
      reference="full",
      sections=sections,
      curves=("full", "post_ln", "no_transformer"),
      attention=("full", "gim", GIM_TOKENS))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return _config_and_grid(arg)[0]


def get_grid(arg: str | None = None) -> Grid:
  return _config_and_grid(arg)[1]


def get_search_space(arg: str | None = None) -> SearchSpace:
  """The protocol 'tuned': MIAN's space (configs/mian.py) for every variant."""
  return mian.get_search_space()
