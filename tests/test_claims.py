"""The claims ledger (experiments/claims.py): Δ, Welch's p and verdicts on a toy results tree, and the
real registry's variants against the grids' definitions."""
import csv
import pathlib

import numpy as np
import pytest
from scipy import stats

from experiments import claims as ledger
from experiments.main import load_config_module

REPO = pathlib.Path(__file__).resolve().parents[1]

# Per-seed test metrics of a toy grid 'toy': (auc, logloss) per seed.
SEEDS = {
    "ref": ([0.700, 0.710, 0.720, 0.705, 0.715], [0.50, 0.51, 0.49, 0.50, 0.52]),
    "better": ([0.750, 0.760, 0.755, 0.745, 0.765], [0.45, 0.46, 0.44, 0.45, 0.47]),
    "worse": ([0.650, 0.655, 0.660, 0.645, 0.650], [0.55, 0.56, 0.54, 0.55, 0.57]),
    "level": ([0.690, 0.730, 0.700, 0.725, 0.705], [0.48, 0.53, 0.50, 0.49, 0.51]),
}
QUICK = {v: (auc[:2], logloss[:2]) for v, (auc, logloss) in SEEDS.items() if v in ("ref", "better")}


def _write_table(path: pathlib.Path, seeds: dict):
  """A table.csv as experiments/report.py writes it: mean and sample std (ddof=1) over seeds."""
  path.mkdir(parents=True)
  with open(path / "table.csv", "w", newline="") as fh:
    writer = csv.writer(fh)
    writer.writerow(["variant", "seeds", "auc_mean", "auc_std", "logloss_mean", "logloss_std"])
    for variant, (auc, logloss) in seeds.items():
      writer.writerow([variant, len(auc), np.mean(auc), np.std(auc, ddof=1),
                       np.mean(logloss), np.std(logloss, ddof=1)])


def _claim(a, b, metric="auc", direction=">", grid="toy"):
  return ledger.Claim("DIN", "Toy Table", f"{a} {direction} {b}", grid, a, b, metric, direction)


TOY_CLAIMS = [
    _claim("better", "ref"),                       # reproduced
    _claim("worse", "ref"),                        # opposite
    _claim("level", "ref"),                        # not significant
    _claim("better", "ref", "logloss", "<"),       # reproduced, on a lower-is-better metric
    _claim("ref", "better", "logloss", "<"),       # opposite
    _claim("missing", "ref"),                      # no table has 'missing': skipped
    _claim("better", "ref", grid="other"),         # another grid's tables: none here
]


@pytest.fixture
def results(tmp_path):
  _write_table(tmp_path / "toy" / "ds_a", SEEDS)
  _write_table(tmp_path / "toy_quick" / "ds_b", QUICK)
  return tmp_path


def test_delta_p_and_verdicts(results):
  checks, unchecked = ledger.check_all(TOY_CLAIMS, ledger.read_tables(results))
  assert unchecked == TOY_CLAIMS[-2:]
  got = {(c.claim, c.table.folder): c for c in checks}
  assert len(got) == len(checks) == 5 + 3      # ds_a holds 5 claims, ds_b the 3 on 'ref' and 'better'
  for (claim, folder), c in got.items():
    seeds = SEEDS if folder == "toy" else QUICK
    column = 0 if claim.metric == "auc" else 1
    a, b = seeds[claim.a][column], seeds[claim.b][column]
    assert c.seeds == (len(a), len(b))
    assert c.delta == pytest.approx(np.mean(a) - np.mean(b), abs=1e-12)
    assert c.p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-9)
  verdicts = [got[claim, "toy"].verdict for claim in TOY_CLAIMS[:5]]
  assert verdicts == [ledger.REPRODUCED, ledger.OPPOSITE, ledger.NOT_SIGNIFICANT,
                      ledger.REPRODUCED, ledger.OPPOSITE]
  assert got[TOY_CLAIMS[0], "toy_quick"].table.protocol == "quick"
  assert got[TOY_CLAIMS[0], "toy"].table.protocol == ledger.FULL_PROTOCOL


def test_a_tuned_table_is_checked_on_its_tuned_rows(tmp_path):
  _write_table(tmp_path / "toy_tuned" / "ds_c", SEEDS)
  path = tmp_path / "toy_tuned" / "ds_c" / "table.csv"
  with open(path, newline="") as fh:
    tuned = list(csv.DictReader(fh))
  paper = [{**row, "auc_mean": 1 - float(row["auc_mean"])} for row in tuned]   # paper rows: the order reversed
  with open(path, "w", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=["setting", *tuned[0], "delta_vs_paper"])
    writer.writeheader()
    writer.writerows([{"setting": "paper", **r, "delta_vs_paper": "nan"} for r in paper]
                     + [{"setting": "tuned", **r, "delta_vs_paper": "0.01"} for r in tuned])
  table, = ledger.read_tables(tmp_path)
  assert (table.grid, table.protocol) == ("toy", "tuned")
  assert table.rows["better"]["auc_mean"] == pytest.approx(np.mean(SEEDS["better"][0]))
  checks, _ = ledger.check_all(TOY_CLAIMS[:3], [table])
  assert [c.verdict for c in checks] == [ledger.REPRODUCED, ledger.OPPOSITE, ledger.NOT_SIGNIFICANT]


def test_written_ledger(results):
  path = ledger.write_ledger(results, TOY_CLAIMS)
  text = path.read_text()
  assert path == results / "CLAIMS.md"
  assert "[toy_quick/ds_b](toy_quick/ds_b/table.md) | quick |" in text
  assert "| DIN | 4 | 1 | 3 | 8 |" in text              # reproduced, not significant, opposite, checks
  assert "missing" in text.split("## Summary")[1]        # listed as not checked yet
  assert ledger.write_ledger(results, TOY_CLAIMS).read_text() == text   # deterministic


def _undefined(claims) -> list:
  """The claims whose two variants are not both variants of one definition of their grid (its
  configs/<grid>.py get_grid, for every dataset it offers)."""
  variant_sets = {}
  for grid in {c.grid for c in claims}:
    module = load_config_module(str(REPO / "configs" / f"{grid}.py"))
    variant_sets[grid] = [set(module.get_grid(f"dataset={d}").variants) for d in module.DATASETS]
  return [c for c in claims if not any({c.a, c.b} <= vs for vs in variant_sets[c.grid])]


def test_registry_variants_exist_in_grids():
  assert ledger.CLAIMS and _undefined(ledger.CLAIMS) == []
  typo = _claim("din_dise", "din", grid="ablation_din")
  assert _undefined([typo]) == [typo]
