"""configs/mian_factorial.py's design and experiments/factorial.py's interaction plot and contrasts."""
import csv
import itertools

import numpy as np
import pytest
from scipy import stats

from configs import mian_factorial
from experiments import factorial


def test_the_grid_is_every_combination_of_the_three_factors_once():
  grid = mian_factorial.get_grid(None)
  assert len(grid.variants) == 2 * 3 * 4 and grid.reference == "mlp32_8-gim_sum-full"
  for mlp, gim, behaviour in itertools.product(mian_factorial.MLPS, mian_factorial.GIMS,
                                               mian_factorial.BEHAVIOUR_INPUTS):
    overrides = grid.variants[f"{mlp}-{gim}-{behaviour}"]
    assert overrides["model.dnn.hidden"] == mian_factorial.MLPS[mlp]
    assert overrides["model.use_gim"] == (gim != "gim_off")
    assert (overrides["model.use_ibim"], overrides["model.use_behavior_mean"]) == {
        "full": (True, True), "eb_only": (False, True), "ibim_only": (True, False), "none": (False, False)}[behaviour]
  assert mian_factorial.get_config(None).dataset.signal_context == 0.0     # the planted-signal world


def test_interaction_plot_reads_every_variant(tmp_path):
  with open(tmp_path / "table.csv", "w", newline="") as fh:
    writer = csv.DictWriter(fh, ["variant", "auc_mean", "auc_std"])
    writer.writeheader()
    for i, name in enumerate(mian_factorial.variants()):
      writer.writerow({"variant": name, "auc_mean": 0.7 + i / 1000, "auc_std": 0.001})
  levels = factorial.read_levels(tmp_path / "table.csv")
  assert levels[("mlp200_80", "gim_off", "none")] == pytest.approx((0.7 + 23 / 1000, 0.001))
  assert factorial.figure(tmp_path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  (tmp_path / "table.csv").write_text("variant,auc_mean,auc_std\nfull,0.7,0.01\n")
  with pytest.raises(ValueError, match="'full' is not three factor levels"):
    factorial.read_levels(tmp_path / "table.csv")


def test_contrasts_change_one_factor_and_match_welch_on_the_seeds(tmp_path):
  rng = np.random.default_rng(0)
  seeds = {name: 0.7 + i / 200 + rng.normal(0, 0.005, 5) for i, name in enumerate(mian_factorial.variants())}
  with open(tmp_path / "table.csv", "w", newline="") as fh:
    writer = csv.DictWriter(fh, ["variant", "seeds", "auc_mean", "auc_std"])
    writer.writeheader()
    for name, auc in seeds.items():
      writer.writerow({"variant": name, "seeds": 5, "auc_mean": auc.mean(), "auc_std": auc.std(ddof=1)})
  text = factorial.contrasts(tmp_path, mian_factorial.REFERENCE).read_text()
  a, b = seeds["mlp200_80-gim_off-none"], seeds["mlp200_80-gim_off-full"]      # behaviour changed, rest fixed
  p = stats.ttest_ind(a, b, equal_var=False).pvalue
  row = next(line for line in text.split("## full →")[1].splitlines() if line.startswith("| mlp200_80, gim_off |"))
  assert row.split(" | ")[-1].startswith(f"{a.mean() - b.mean():+.4f} (p {p:.2g}")
  assert "of these 46 contrasts" in text        # 12 (MLP) + 2 x 8 (GIM) + 3 x 6 (behaviour)
