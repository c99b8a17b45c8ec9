"""AutoInt's experiments (CIKM'19) as one grid, on Criteo (the 10k-line sample in ../shared by default)
or on MovieLens in AutoInt's 7-field form.

  ./run.sh configs/ablation_autoint.py                  # 5 seeds, early stopping on valid AUC
  ./run.sh configs/ablation_autoint.py:quick            # 2 seeds, 1 epoch: a smoke run
  ./run.sh configs/ablation_autoint.py:dataset=ml-100k  # MovieLens-100k, AutoInt's 7 fields
  ./run.sh configs/ablation_autoint.py --config.dataset.raw_dir=/data/criteo/train.txt   # full Criteo

Sections (the paper's tables and figures):
  Table 2: LR, FM, AFM, DeepCrossing, NFM, CrossNet, CIN, HOFM, AutoInt — models without a joint DNN
    (DeepCrossing and NFM are DNN-based by design);
  Table 5: Wide&Deep, DeepFM, DCN, xDeepFM, AutoInt+ — the same families with a joint DNN 400-400 ReLU;
  Newer models: DCNv2 (full-rank parallel and stacked, low-rank mixture), IPNN, FinalMLP (two 400-400
    streams with feature selection), FINAL (2 blocks with their block losses; its BatchNorm with flax's
    0.99 running-average decay and with torch's, 0.9);
  Table 4: AutoInt with and without residual connections;
  Figure 5: 0-4 interacting layers; Figure 6: embedding size 8, 16, 24, 32.
Every field of a Criteo row is one of the M = 39 fields (13 numeric, value × vector, AutoInt §4.3;
26 categorical). Adam 1e-3 (paper), embedding 16, batch 256 (the paper's 1024 leaves 8 steps per
epoch on the 8,000 training rows of the sample), early stopping on valid AUC with patience 2. There
is no user id, so no GAUC. RelaImpr is against AutoInt (no DNN).
With dataset=ml-100k: the paper's MovieLens form (§5.1.1; data_prep/movielens.py protocol "autoint7"):
gender, age, occupation, zip, genres (mean-pooled), release-year bucket, timestamp (numeric,
value × vector); no user or movie ids; rating 3 dropped; random 80/10/10 split (seed 2019); GAUC
grouped by the (non-input) user.
"""
import ml_collections

from configs import base
from configs.common import Grid, apply_grid_arg, grid_identity, parse_grid_arg
from ctrjax.models import default_config

DATASETS = ("criteo", "ml-100k")
DEEP = {"hidden": (400, 400), "activation": "relu"}     # Table 5's joint DNN


def _m(name: str, **overrides) -> dict:
  """Variant: model ``name`` with the fields that differ from its defaults."""
  return {"model_name": name, "model": default_config(name, **overrides).to_dict()}


VARIANTS = {
    # Table 2: no joint DNN.
    "lr": _m("lr"),
    "fm": _m("fm"),
    "afm": _m("afm"),
    "deep_crossing": _m("deep_crossing"),
    "nfm": _m("nfm"),
    "crossnet": _m("dcn", dnn={"hidden": ()}),
    "cin": _m("xdeepfm", first_order=False, dnn={"hidden": ()}),
    "hofm": _m("hofm"),
    "autoint": _m("autoint"),
    # Table 5: with a joint DNN.
    "wide_deep": _m("wide_deep", pooling="mean", wide_cross=(), cross_buckets=2, dnn=DEEP),
    "deepfm": _m("deepfm", pooling="mean", dnn=DEEP),
    "dcn": _m("dcn", dnn=DEEP),
    "xdeepfm": _m("xdeepfm", dnn=DEEP),
    "autoint_plus": _m("autoint", dnn=DEEP),
    # Newer zoo models, the same joint DNN where they have one (not in the paper).
    "dcnv2": _m("dcnv2", dnn=DEEP),
    "dcnv2_stacked": _m("dcnv2", structure="stacked", dnn=DEEP),
    "dcnv2_mixture": _m("dcnv2", cross_type="low_rank_mixture", dnn=DEEP),
    "ipnn": _m("pnn", pooling="mean", dnn=DEEP),
    "finalmlp": _m("finalmlp", mlp2_hidden=(400, 400), fs_hidden=(400,), dnn={"hidden": (400, 400)}),
    "final": _m("final"),
    "final_bn09": _m("final", batch_norm_momentum=0.9),   # BatchNorm averages as torch's
    # Table 4, Figures 5-6.
    "autoint_no_residual": _m("autoint", residual=False),
    **{f"autoint_layers{k}": _m("autoint", num_layers=k) for k in (0, 1, 2, 4)},
    **{f"autoint_embed{d}": _m("autoint", embed_dim=d) for d in (8, 24, 32)},
}
TABLE2 = ("lr", "fm", "afm", "deep_crossing", "nfm", "crossnet", "cin", "hofm", "autoint")
TABLE5 = ("wide_deep", "deepfm", "dcn", "xdeepfm", "autoint_plus")
NEWER = ("dcnv2", "dcnv2_stacked", "dcnv2_mixture", "ipnn", "finalmlp", "final", "final_bn09")


def _config_and_grid(arg: str | None) -> tuple[ml_collections.ConfigDict, Grid]:
  """The run config and the grid of the argument (parsed once for both)."""
  a = parse_grid_arg(arg, DATASETS)
  c = base.get_config()
  c.batch_size = 256
  c = apply_grid_arg(c, a)
  if a["dataset"] == "ml-100k":
    c.dataset.protocol = "autoint7"
  else:
    c.gauc_group = ""
  return c, Grid(
      **grid_identity("ablation_autoint", a),
      variants=VARIANTS,
      reference="autoint",
      sections={"Table 2: without a joint DNN": TABLE2,
                "Table 5: with a joint DNN": TABLE5,
                "Newer models (not in the paper)": NEWER,
                "Table 4: residual connections": ("autoint", "autoint_no_residual"),
                "Figure 5: interacting layers": ("autoint_layers0", "autoint_layers1", "autoint_layers2",
                                                 "autoint", "autoint_layers4"),
                "Figure 6: embedding size": ("autoint_embed8", "autoint", "autoint_embed24",
                                             "autoint_embed32")},
      curves=("autoint", "autoint_plus", "autoint_no_residual"))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return _config_and_grid(arg)[0]


def get_grid(arg: str | None = None) -> Grid:
  return _config_and_grid(arg)[1]
