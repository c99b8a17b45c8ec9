"""A ledger of the orderings the four seed papers claim, checked against our grids' tables.

  .venv/bin/python -m experiments.claims      # from the repository root: writes results/CLAIMS.md

``CLAIMS`` holds one entry per ordering a paper states in a table, a figure or its text (MIAN, AutoInt,
DIN, FESeq; section and table numbers are the papers'), restricted to orderings whose two models are
variants of one of our grids (configs/ablation_*.py). Each claim is checked on every
``results/<grid>[_<protocol>]/<dataset>/table.csv`` that holds both variants: Δ = mean_A − mean_B of
the claim's test metric, Welch's t-test from the table's mean, sample std (ddof=1) and seed count,
and a verdict. Rerunning without new tables rewrites the same file.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import pathlib
import sys

from scipy import stats

from configs.common import FULL_SEEDS, PROTOCOLS, TUNED
from experiments.grid import METRICS

ALPHA = 0.05
REPRODUCED, NOT_SIGNIFICANT, OPPOSITE = "reproduced", "not significant", "opposite"
VERDICTS = (REPRODUCED, NOT_SIGNIFICANT, OPPOSITE)
FULL_PROTOCOL = "full"                      # a grid run without a protocol argument
PAPERS = {                                  # the seed papers, in the order of the ledger
    "MIAN": "Zhang et al., Multi-Interactive Attention Network for Fine-grained Feature Learning in "
            "CTR Prediction (WSDM 2021)",
    "AutoInt": "Song et al., AutoInt: Automatic Feature Interaction Learning via Self-Attentive Neural "
               "Networks (CIKM 2019)",
    "DIN": "Zhou et al., Deep Interest Network for Click-Through Rate Prediction (KDD 2018)",
    "FESeq": "Liu et al., Feature Interaction-Enhanced Sequential Transformer for Click-Through Rate "
             "Prediction",
}


@dataclasses.dataclass(frozen=True)
class Claim:
  """One ordering a paper claims: on ``metric``, variant ``a`` is above (``>``) or below (``<``)
  variant ``b`` of ``grid`` (a config file stem, configs/<grid>.py)."""
  paper: str
  where: str
  words: str
  grid: str
  a: str
  b: str
  metric: str = "auc"
  direction: str = ">"

  def __post_init__(self):
    if self.paper not in PAPERS or self.metric not in METRICS or self.direction not in (">", "<"):
      raise ValueError(f"bad claim {self}: paper one of {list(PAPERS)}, metric one of {METRICS}, "
                       "direction '>' or '<'")


_MIAN_MODULES = ("no_iuim", "no_icim", "no_ibim", "no_gim", "no_iuim_icim")
_AUTOINT_TABLE2 = ("lr", "fm", "afm", "deep_crossing", "nfm", "crossnet", "cin", "hofm")
_DIN_DEEP = ("base_model", "wide_deep", "pnn", "deepfm", "din", "din_dice")
_FESEQ_DEPTHS = ((1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2), (3, 3))   # (input, target) layers
_FESEQ_EMBED = ("embed_8", "embed_24", "embed_32")

# The papers' names of our variants, for the claims' words.
NAMES = {
    # MIAN (configs/ablation_mian.py)
    "full": "MIAN", "no_iuim": "w/o IUIM", "no_icim": "w/o ICIM", "no_ibim": "w/o IBIM",
    "no_gim": "w/o GIM", "no_iuim_icim": "w/o IUIM & ICIM", "post_ln": "Post-LN Transformer",
    "no_transformer": "no Transformer",
    # DIN (configs/ablation_din.py, configs/ablation_din_reg.py)
    "lr": "LR", "base_model": "BaseModel", "wide_deep": "Wide&Deep", "pnn": "PNN", "deepfm": "DeepFM",
    "din": "DIN", "din_dice": "DIN with Dice", "dien": "DIEN",
    "none": "no regularisation", "dropout": "dropout", "filter": "frequency filter",
    "difacto": "DiFacto", "mba": "MBA",
    # AutoInt (configs/ablation_autoint.py)
    "fm": "FM", "afm": "AFM", "deep_crossing": "DeepCrossing", "nfm": "NFM", "crossnet": "CrossNet",
    "cin": "CIN", "hofm": "HOFM", "autoint": "AutoInt", "dcn": "Deep&Cross", "xdeepfm": "xDeepFM",
    "autoint_plus": "AutoInt+", "autoint_no_residual": "AutoInt w/o residual",
    "autoint_layers0": "0 layers", "autoint_layers1": "1 layer", "autoint_layers2": "2 layers",
    "autoint_embed8": "d=8", "autoint_embed24": "d=24", "autoint_embed32": "d=32",
    "ipnn": "PNN", "dcnv2": "DCNv2", "finalmlp": "FinalMLP", "final": "FINAL",
    # FESeq (configs/ablation_feseq.py)
    "causal": "FESeq", "sasrec": "SASRec", "tisasrec": "TiSASRec", "dmr": "DMR",
    "no_interaction": "w/o Int", "no_non_sequence": "w/o Non-seq Feats", "no_position": "w/o Pos",
    "no_time": "w/o Time", "non_causal": "w/o Causal", "target_pooling": "Target Pooling",
    "mean_pooling": "Mean Pooling", "dot_score": "Scaled Dot Attention", "din_score": "DIN Attention",
    "no_scale": "w/o Scale", "embed_8": "d=8", "embed_24": "d=24", "embed_32": "d=32",
    **{f"depth_{m}{n}": f"depths ({m}, {n})" for m, n in _FESEQ_DEPTHS},
}
_AUTOINT_NAMES = {"autoint": "d=16"}        # Figure 6 names AutoInt by its embedding size
_FESEQ_NAMES = {"causal": "FESeq (2, 2)"}   # Table 11 names FESeq by its depths


def _claims(paper: str, where: str, grid: str, pairs, metric: str = "auc", direction: str = ">",
            names: dict[str, str] | None = None) -> list[Claim]:
  """Claims ``a <direction> b`` for each (a, b) in ``pairs``, worded with NAMES (``names`` first)."""
  names = {**NAMES, **(names or {})}
  suffix = "" if metric == "auc" else f" ({metric})"
  return [Claim(paper, where, f"{names[a]} {direction} {names[b]}{suffix}", grid, a, b, metric, direction)
          for a, b in pairs]


CLAIMS: tuple[Claim, ...] = tuple(
    # MIAN. §4.4 (2): MIAN best on every dataset and metric; §4.5: LR < Wide&Deep < DeepFM < DIN < DIEN
    # (tested on DIN's grid, which has those models); §4.7.1: each module helps, removing IBIM hurts
    # most, removing IUIM & ICIM next; §4.7.2: Pre-LN > Post-LN > no Transformer, Pre-LN on both metrics.
    _claims("MIAN", "MIAN Table 2 (§4.4)", "ablation_mian", [("full", "din")])
    + _claims("MIAN", "MIAN Table 2 (§4.4)", "ablation_mian", [("full", "din")], "logloss", "<")
    + _claims("MIAN", "MIAN Table 2 (§4.5)", "ablation_din",
              [("wide_deep", "lr"), ("deepfm", "wide_deep"), ("din", "deepfm"), ("dien", "din")])
    + _claims("MIAN", "MIAN Table 3", "ablation_mian", [("full", v) for v in _MIAN_MODULES])
    + _claims("MIAN", "MIAN Table 3 (§4.7.1: w/o IBIM worst)", "ablation_mian",
              [(v, "no_ibim") for v in _MIAN_MODULES if v != "no_ibim"])
    + _claims("MIAN", "MIAN Table 3 (§4.7.1: w/o IUIM & ICIM next)", "ablation_mian",
              [(v, "no_iuim_icim") for v in ("no_iuim", "no_icim", "no_gim")])
    + _claims("MIAN", "MIAN Table 4", "ablation_mian",
              [("full", "post_ln"), ("full", "no_transformer"), ("post_ln", "no_transformer")],
              names={"full": "Pre-LN Transformer (MIAN)"})
    + _claims("MIAN", "MIAN Table 4 (§4.7.2)", "ablation_mian", [("full", "post_ln")], "logloss", "<",
              names={"full": "Pre-LN Transformer (MIAN)"})
    # AutoInt. Table 2: AutoInt above every baseline on both metrics; §5.2: FM, AFM > LR, CIN above
    # the low-order models, HOFM > FM. Table 4: residual connections help. Table 5: AutoInt+ above the
    # joint models, and joint training lifts each base model (its "Avg. Changes" column).
    # Figure 5: 0 < 1 < 2 < 3 layers (then stable). Figure 6: d=8 < d=16 on both of its datasets,
    # rising to 32 on KDD12, falling from 24 on MovieLens-1M.
    + _claims("AutoInt", "AutoInt Table 2", "ablation_autoint", [("autoint", v) for v in _AUTOINT_TABLE2])
    + _claims("AutoInt", "AutoInt Table 2", "ablation_autoint", [("autoint", v) for v in _AUTOINT_TABLE2],
              "logloss", "<")
    + _claims("AutoInt", "AutoInt Table 2 (§5.2)", "ablation_autoint",
              [("fm", "lr"), ("afm", "lr"), ("cin", "lr"), ("cin", "fm"), ("cin", "afm"), ("hofm", "fm")])
    + _claims("AutoInt", "AutoInt Table 4", "ablation_autoint", [("autoint", "autoint_no_residual")])
    + _claims("AutoInt", "AutoInt Table 5", "ablation_autoint",
              [("autoint_plus", v) for v in ("wide_deep", "deepfm", "dcn", "xdeepfm", "autoint")]
              + [("wide_deep", "lr"), ("deepfm", "fm"), ("dcn", "crossnet"), ("xdeepfm", "cin")])
    + _claims("AutoInt", "AutoInt Figure 5", "ablation_autoint",
              [("autoint_layers1", "autoint_layers0"), ("autoint_layers2", "autoint_layers1"),
               ("autoint", "autoint_layers2")], names={"autoint": "3 layers"})
    + _claims("AutoInt", "AutoInt Figure 6", "ablation_autoint", [("autoint", "autoint_embed8")],
              names=_AUTOINT_NAMES)
    + _claims("AutoInt", "AutoInt Figure 6 (KDD12)", "ablation_autoint",
              [("autoint_embed24", "autoint"), ("autoint_embed32", "autoint_embed24")], names=_AUTOINT_NAMES)
    + _claims("AutoInt", "AutoInt Figure 6 (MovieLens-1M)", "ablation_autoint",
              [("autoint_embed24", "autoint_embed32")])
    # DIN. Table 3 (§6.4) and Table 5 (§6.6): every deep model beats LR, each beats BaseModel
    # (positive RelaImpr), PNN and DeepFM beat Wide&Deep, DeepFM the best competitor, DIN beats them
    # all, Dice beats PReLU. Table 4 and Figure 4 (§6.5): MBA best; dropout and filter help; filter
    # beats dropout and DiFacto.
    + _claims("DIN", "DIN Table 3, Table 5", "ablation_din", [(v, "lr") for v in _DIN_DEEP])
    + _claims("DIN", "DIN Table 3, Table 5", "ablation_din",
              [(v, "base_model") for v in ("wide_deep", "pnn", "deepfm", "din", "din_dice")]
              + [("pnn", "wide_deep"), ("deepfm", "wide_deep"), ("deepfm", "pnn")]
              + [("din", v) for v in ("wide_deep", "pnn", "deepfm")] + [("din_dice", "din")])
    + _claims("DIN", "DIN Table 4, Figure 4", "ablation_din_reg",
              [("mba", v) for v in ("none", "dropout", "filter", "difacto")]
              + [("dropout", "none"), ("filter", "none"), ("filter", "dropout"), ("filter", "difacto")])
    # FESeq. Table 3: FESeq above every baseline, DMR the best sequential one, FINAL the best feature
    # interaction one (tested on AutoInt's grid, which has those models). Tables 4-10: each part helps
    # (w/o Pos hurts more than w/o Time; scaled dot above DIN attention). Table 11 and Figure 4:
    # depths (2, 2) and d=16 best on both AUC and logloss.
    + _claims("FESeq", "FESeq Table 3", "ablation_feseq",
              [("causal", v) for v in ("sasrec", "tisasrec", "dmr")]
              + [("dmr", "sasrec"), ("dmr", "tisasrec")])
    + _claims("FESeq", "FESeq Table 3", "ablation_autoint",
              [("final", v)
               for v in ("wide_deep", "ipnn", "deepfm", "dcn", "autoint", "dcnv2", "finalmlp")])
    + _claims("FESeq", "FESeq Table 4", "ablation_feseq", [("causal", "no_interaction")])
    + _claims("FESeq", "FESeq Table 5", "ablation_feseq", [("causal", "no_non_sequence")])
    + _claims("FESeq", "FESeq Table 6", "ablation_feseq",
              [("causal", "no_position"), ("causal", "no_time"), ("no_time", "no_position")])
    + _claims("FESeq", "FESeq Table 7", "ablation_feseq", [("causal", "non_causal")])
    + _claims("FESeq", "FESeq Table 8", "ablation_feseq",
              [("causal", "target_pooling"), ("causal", "mean_pooling")])
    + _claims("FESeq", "FESeq Table 9", "ablation_feseq",
              [("causal", "dot_score"), ("causal", "din_score"), ("dot_score", "din_score")])
    + _claims("FESeq", "FESeq Table 10", "ablation_feseq", [("causal", "no_scale")])
    + _claims("FESeq", "FESeq Table 11", "ablation_feseq",
              [("causal", f"depth_{m}{n}") for m, n in _FESEQ_DEPTHS], names=_FESEQ_NAMES)
    + _claims("FESeq", "FESeq Table 11", "ablation_feseq",
              [("causal", f"depth_{m}{n}") for m, n in _FESEQ_DEPTHS], "logloss", "<", names=_FESEQ_NAMES)
    + _claims("FESeq", "FESeq Figure 4", "ablation_feseq", [("causal", v) for v in _FESEQ_EMBED],
              names={"causal": "d=16"})
    + _claims("FESeq", "FESeq Figure 4", "ablation_feseq", [("causal", v) for v in _FESEQ_EMBED],
              "logloss", "<", names={"causal": "d=16"})
)


@dataclasses.dataclass(frozen=True)
class Table:
  """One grid table: results/<folder>/<dataset>/table.csv, its rows by variant."""
  folder: str                               # the grid's name, ``_<protocol>`` appended for a protocol
  dataset: str
  rows: dict[str, dict[str, float]]

  @property
  def grid(self) -> str:
    return grid_and_protocol(self.folder)[0]

  @property
  def protocol(self) -> str:
    return grid_and_protocol(self.folder)[1]

  @property
  def link(self) -> str:
    """The table's table.md relative to results/ (where CLAIMS.md is)."""
    return f"{self.folder}/{self.dataset}/table.md"


def grid_and_protocol(folder: str) -> tuple[str, str]:
  """'ablation_mian_quick' -> ('ablation_mian', 'quick'); a folder without a protocol suffix is the
  full protocol (configs/common.py grid_identity names the folders)."""
  for protocol in (*PROTOCOLS, TUNED):
    if folder.endswith(f"_{protocol}"):
      return folder[:-len(protocol) - 1], protocol
  return folder, FULL_PROTOCOL


def read_tables(results: pathlib.Path) -> list[Table]:
  """Every results/<folder>/<dataset>/table.csv, sorted by folder and dataset. Of a table of the
  protocol 'tuned' (experiments/tune.py: a paper and a tuned row per variant) the tuned rows: the
  paper rows are the ordinary grid's, checked on its own table."""
  tables = []
  for path in sorted(pathlib.Path(results).glob("*/*/table.csv")):
    with open(path, newline="") as fh:
      rows = {r["variant"]: {k: float(v) for k, v in r.items() if k not in ("variant", "setting")}
              for r in csv.DictReader(fh) if r.get("setting", TUNED) == TUNED}
    tables.append(Table(path.parent.parent.name, path.parent.name, rows))
  return tables


@dataclasses.dataclass(frozen=True)
class Check:
  """A claim on one table: A's and B's seeds, mean and std, Δ = mean_A − mean_B, Welch's p, verdict."""
  claim: Claim
  table: Table
  seeds: tuple[int, int]
  mean: tuple[float, float]
  std: tuple[float, float]
  delta: float
  p: float
  verdict: str


def check(claim: Claim, table: Table) -> Check:
  """The claim on a table that holds both of its variants. Welch's t-test from the table's summary
  (its std is the sample std, ddof=1: experiments/report.py mean_std); a p that is nan (a single
  seed) is not significant."""
  a, b = (table.rows[v] for v in (claim.a, claim.b))
  m = claim.metric
  seeds = (int(a["seeds"]), int(b["seeds"]))
  mean, std = (a[f"{m}_mean"], b[f"{m}_mean"]), (a[f"{m}_std"], b[f"{m}_std"])
  p = float(stats.ttest_ind_from_stats(mean[0], std[0], seeds[0], mean[1], std[1], seeds[1],
                                       equal_var=False).pvalue)
  delta = mean[0] - mean[1]
  if not p < ALPHA:
    verdict = NOT_SIGNIFICANT
  elif (delta > 0) == (claim.direction == ">"):
    verdict = REPRODUCED
  else:
    verdict = OPPOSITE
  return Check(claim, table, seeds, mean, std, delta, p, verdict)


def check_all(claims, tables) -> tuple[list[Check], list[Claim]]:
  """Every claim on every table of its grid that holds both variants (claims in registry order,
  tables in ``tables``' order), and the claims no table holds yet."""
  checks, unchecked = [], []
  for claim in claims:
    found = [check(claim, t) for t in tables
             if t.grid == claim.grid and claim.a in t.rows and claim.b in t.rows]
    checks += found
    unchecked += [] if found else [claim]
  return checks, unchecked


def _p_text(p: float) -> str:
  return "—" if math.isnan(p) else f"{p:.2g}"


def _protocols_text() -> str:
  full = f"`{FULL_PROTOCOL}` = the grid's own schedule with early stopping, {len(FULL_SEEDS)} seeds"
  others = [f"`{name}` = {len(seeds)} seeds, at most {epochs} epoch{'s' if epochs > 1 else ''}"
            for name, (seeds, epochs) in PROTOCOLS.items()]
  tuned = (f"`{TUNED}` = each variant's best setting of its own study (selected on validation AUC; "
           f"docs/tuning.md), {len(FULL_SEEDS)} seeds with early stopping")
  return "; ".join([full, *others, tuned])


def ledger(checks: list[Check], unchecked: list[Claim]) -> str:
  """results/CLAIMS.md: the header, one table per paper, the verdict counts per paper."""
  lines = [
      "# Claims ledger: the seed papers' orderings on our grids",
      "",
      "Generated from the grids' `results/<grid>/<dataset>/table.csv` by `experiments/claims.py` (its",
      "`CLAIMS` registry says where each paper makes each claim); do not edit by hand, rerun:",
      "",
      "```bash",
      ".venv/bin/python -m experiments.claims",
      "```",
      "",
      "Each row is one ordering a paper claims (in a table, a figure or its text), checked on one of",
      "our tables that holds both variants. A and B are the test metric's mean ± std over the seeds;",
      "Δ = mean_A − mean_B; p is Welch's t-test from the table's mean, sample std (ddof=1) and seed count",
      "(`scipy.stats.ttest_ind_from_stats`). The metric is test AUC (claim A > B) unless the claim names",
      "logloss (lower is better: A < B), which is claimed where the paper says its ordering holds on both",
      "metrics. Verdicts:",
      "",
      f"* **{REPRODUCED}**: Δ in the claimed direction and p < {ALPHA};",
      f"* **{NOT_SIGNIFICANT}**: p ≥ {ALPHA}, whatever the sign of Δ;",
      f"* **{OPPOSITE}**: Δ against the claim and p < {ALPHA}.",
      "",
      f"p is **not corrected for multiple comparisons**: of these {len(checks)} checks about "
      f"{ALPHA * len(checks):.0f} would come out",
      "significant by chance alone if no ordering held.",
      "",
      f"Protocols (the results folder's suffix): {_protocols_text()}.",
      "",
      "The papers' datasets (Amazon, Criteo's 45M rows, Alibaba, Ele.me, ...) are not ours: a verdict",
      "says whether the ordering holds on our data and training budget, not whether the paper's",
      "numbers are right. Each grid's README.md reads its tables.",
      "",
  ]
  head = ("| where | claim | variants (A vs B) | metric | table | protocol | seeds | A | B | Δ | p "
          "| verdict |\n" + "|---" * 12 + "|")
  for paper, title in PAPERS.items():
    rows = [c for c in checks if c.claim.paper == paper]
    if not rows:
      continue
    lines += [f"## {paper}", "", title + ".", "", head]
    for c in rows:
      lines.append(
          f"| {c.claim.where} | {c.claim.words} | `{c.claim.a}` vs `{c.claim.b}` | {c.claim.metric} "
          f"| [{c.table.folder}/{c.table.dataset}]({c.table.link}) | {c.table.protocol} "
          f"| {c.seeds[0]} / {c.seeds[1]} | {c.mean[0]:.4f} ± {c.std[0]:.4f} "
          f"| {c.mean[1]:.4f} ± {c.std[1]:.4f} | {c.delta:+.4f} | {_p_text(c.p)} | {c.verdict} |")
    lines.append("")
  lines += ["## Summary", "", "Checks (claim × table) per verdict:", "",
            "| paper | " + " | ".join(VERDICTS) + " | checks |", "|---|" + "---|" * (len(VERDICTS) + 1)]
  for paper in [*PAPERS, "all"]:
    rows = [c for c in checks if paper in ("all", c.claim.paper)]
    counts = [sum(c.verdict == v for c in rows) for v in VERDICTS]
    lines.append(f"| {paper} | " + " | ".join(map(str, counts)) + f" | {len(rows)} |")
  if unchecked:
    lines += ["", "Claims no table holds both variants of yet: "
              + "; ".join(f"{c.where}: {c.words} (`{c.grid}`: `{c.a}` vs `{c.b}`)" for c in unchecked) + "."]
  return "\n".join(lines) + "\n"


def write_ledger(results: pathlib.Path = pathlib.Path("results"), claims=CLAIMS) -> pathlib.Path:
  """Checks ``claims`` on the tables under ``results`` and writes ``results``/CLAIMS.md."""
  out = pathlib.Path(results) / "CLAIMS.md"
  out.write_text(ledger(*check_all(claims, read_tables(results))))
  return out


if __name__ == "__main__":
  if len(sys.argv) > 1:
    sys.exit(__doc__)
  print(f"wrote {write_ledger()}")
