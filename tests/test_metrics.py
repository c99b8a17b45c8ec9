"""Metrics against sklearn (the oracle), on random data with many ties."""
import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from ctrjax import metrics


def _data(seed, n=2000, levels=7, users=60):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, n)
  s = np.round(rng.random(n) * levels) / levels        # heavy ties
  g = rng.integers(0, users, n)
  return y, s, g


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_with_ties(seed):
  y, s, _ = _data(seed)
  assert metrics.auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def _gauc_oracle(y, s, g):
  num = den = 0.0
  for u in np.unique(g):
    m = g == u
    if len(np.unique(y[m])) == 2:
      num += roc_auc_score(y[m], s[m]) * m.sum()
      den += m.sum()
  return num / den, den / len(y)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gauc_matches_per_user_sklearn(seed):
  y, s, g = _data(seed)
  g[:30] = 999                                          # a user with a single class
  y[:30] = 1
  value, coverage = metrics.gauc(y, s, g)
  ref_value, ref_coverage = _gauc_oracle(y, s, g)
  assert value == pytest.approx(ref_value, abs=1e-12)
  assert coverage == pytest.approx(ref_coverage, abs=1e-12)
  assert coverage < 1.0


def test_logloss_matches_sklearn_with_clipping():
  y, s, _ = _data(3)
  s[0], s[1] = 0.0, 1.0                                 # needs clipping
  assert metrics.logloss(y, s) == pytest.approx(log_loss(y, np.clip(s, 1e-7, 1 - 1e-7)), abs=1e-12)


def test_evaluate_drops_weight_zero_rows():
  y, s, g = _data(4)
  w = np.ones(len(y)); w[-100:] = 0
  out = metrics.evaluate(y, s, g, w)
  assert out["rows"] == len(y) - 100
  assert out["auc"] == pytest.approx(roc_auc_score(y[:-100], s[:-100]), abs=1e-12)
  assert out["gauc"] == pytest.approx(_gauc_oracle(y[:-100], s[:-100], g[:-100])[0], abs=1e-12)


def test_single_class_auc_is_nan():
  assert np.isnan(metrics.auc(np.ones(5), np.arange(5)))
