"""FESeq's ablations (paper Tables 4-11, Figure 4) and its sequential baselines (Table 3) as one grid:
every variant x seed, then tables and figures.

  ./run.sh configs/ablation_feseq.py:quick                       # 2 seeds, 1 epoch: a smoke run
  ./run.sh configs/ablation_feseq.py                             # ml-100k, 5 seeds, early stopping
  ./run.sh configs/ablation_feseq.py:short                       # 3 seeds, at most 3 epochs (CPU)
  ./run.sh report configs/ablation_feseq.py:short                # the tables so far, while it runs
  ./run.sh configs/ablation_feseq.py:dataset=ml-latest-small

The full protocol is ~13 h on a 2-core CPU (FESeq trains at ~2.3k samples/s there, compute-bound
at batch 128 and 1024 alike); 'short' is the one run here (README). Runs land in
workdirs/ablation_feseq[_ARG]/<variant>/seed<k> (finished runs are skipped, interrupted
ones resume); tables and figures in results/ablation_feseq[_quick|_short]/<dataset>/. The reference
variant "causal" is the full FESeq (configs/feseq.py), which is causal; "non_causal" drops the mask.
  Table 4  no_interaction: no input and no target-item interacting layers (official FESeq_6).
  Table 5  no_non_sequence: the input interacting layers see the sequence fields only.
  Table 6  no_position, no_time; no_position_log_time = the official FESeq_5 (log2 time buckets).
  Table 7  causal vs non_causal.
  Table 8  target_pooling, mean_pooling (vs attention pooling).
  Table 9  dot_score (scaled dot), din_score (DIN attention) (vs scaled bilinear).
  Table 10 no_scale: bilinear without 1/√d_h.
  Table 11 depth_<M><N>: M input and N target-item interacting layers (2, 2 = causal).
  Fig. 4   embed_8, embed_24, embed_32 (16 = causal).
  Table 3  sasrec, tisasrec, dmr on the same data (configs/sasrec.py, tisasrec.py, dmr.py).
attention.png: the pooling weights of "causal" over the 10 behaviour slots and the target for 14
test samples (the paper's Figures 7-8). The interacting layer's field-pair attention (Figures 5-6):
  python -m experiments.field_attention workdirs/ablation_feseq/causal/seed0 results/ablation_feseq/ml-100k/interaction_attention.png
"""
import ml_collections

from configs import dmr, feseq, sasrec, tisasrec
from configs.common import Grid, apply_grid_arg, grid_identity, parse_grid_arg

DATASETS = ("ml-100k", "ml-latest-small")
DEPTHS = ((1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2), (3, 3))     # (2, 2) is the reference


def _baseline(module) -> dict:
  config = module.get_config()
  return {"model_name": config.model_name, "model": config.model.to_dict()}


VARIANTS = {
    "causal": {},
    "non_causal": {"model.causal": False},
    "no_interaction": {"model.interaction_layers": 0, "model.target_interaction_layers": 0},
    "no_non_sequence": {"model.interact_non_sequence": False},
    "no_position": {"model.use_position": False},
    "no_position_log_time": {"model.use_position": False, "model.time_log_base": 2.0},
    "no_time": {"model.use_time": False},
    "target_pooling": {"model.pooling": "target"},
    "mean_pooling": {"model.pooling": "mean"},
    "dot_score": {"model.pooling_score": "dot"},
    "din_score": {"model.pooling_score": "din"},
    "no_scale": {"model.pooling_scale": False},
    "sasrec": _baseline(sasrec),
    "tisasrec": _baseline(tisasrec),
    "dmr": _baseline(dmr),
    **{f"depth_{m}{n}": {"model.interaction_layers": m, "model.target_interaction_layers": n}
       for m, n in DEPTHS},
    **{f"embed_{d}": {"model.embed_dim": d} for d in (8, 24, 32)},
}                    # in training order: Tables 3-10 first, then the depths and embedding sizes
SLOTS = tuple(f"t-{k}" for k in range(feseq.MAX_LEN, 0, -1)) + ("target",)


def _config_and_grid(arg: str | None) -> tuple[ml_collections.ConfigDict, Grid]:
  """The run config and the grid of the argument (parsed once for both)."""
  a = parse_grid_arg(arg, DATASETS)
  depths = tuple(f"depth_{m}{n}" for m, n in DEPTHS)
  return apply_grid_arg(feseq.get_config(), a), Grid(
      **grid_identity("ablation_feseq", a),
      variants=VARIANTS,
      reference="causal",
      sections={"Table 3: sequential baselines": ("causal", "sasrec", "tisasrec", "dmr"),
                "Table 4: interacting layer": ("causal", "no_interaction"),
                "Table 5: non-sequence fields in the interaction": ("causal", "no_non_sequence"),
                "Table 6: position and time": ("causal", "no_position", "no_position_log_time", "no_time"),
                "Table 7: causal mask": ("causal", "non_causal"),
                "Table 8: pooling": ("causal", "target_pooling", "mean_pooling"),
                "Table 9: pooling score": ("causal", "dot_score", "din_score"),
                "Table 10: pooling scale": ("causal", "no_scale"),
                "Table 11: interaction depths (input, target)": ("causal", *depths),
                "Figure 4: embedding size": ("embed_8", "causal", "embed_24", "embed_32")},
      curves=("causal", "non_causal", "no_interaction", "target_pooling"),
      attention=("causal", "pooling", SLOTS))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return _config_and_grid(arg)[0]


def get_grid(arg: str | None = None) -> Grid:
  return _config_and_grid(arg)[1]
