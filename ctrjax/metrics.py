"""Evaluation metrics, computed on the host in float64.

AUC: Mann-Whitney U with average ranks for ties (equals sklearn's roc_auc_score).
GAUC: sum_u w_u AUC_u / sum_u w_u over users u, w_u = number of u's impressions in the evaluated
  split (DIN paper, impression-weighted); users whose impressions are all of one class are skipped
  (their AUC is undefined). The fraction of impressions kept is reported as ``gauc_coverage``.
logloss: -mean(y log p + (1-y) log(1-p)) with p clipped to [1e-7, 1-1e-7] (FuxiCTR convention).
Rows with weight 0 (the padding of the last evaluation batch) are removed before anything else.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

EPS = 1e-7


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Exact ROC AUC with ties averaged; NaN when only one class is present."""
  y = np.asarray(labels, np.float64) > 0.5
  n_pos = int(y.sum())
  n_neg = y.size - n_pos
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  ranks = rankdata(np.asarray(scores, np.float64))
  return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
  """Impression-weighted group AUC and the fraction of impressions in groups with both classes."""
  y = np.asarray(labels, np.float64) > 0.5
  s = np.asarray(scores, np.float64)
  g = np.asarray(groups)
  if y.size == 0:
    return float("nan"), 0.0
  order = np.lexsort((s, g))                # by group, then score
  y, s, g = y[order], s[order], g[order]
  starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
  sizes = np.diff(np.r_[starts, g.size])
  # Average ranks within each group: global ranks of (group, score) pairs minus the group offset.
  key_change = np.r_[True, (g[1:] != g[:-1]) | (s[1:] != s[:-1])]
  tie_id = np.cumsum(key_change) - 1
  first = np.flatnonzero(key_change)
  last = np.r_[first[1:], g.size] - 1
  avg_rank = (first + last) / 2.0 + 1.0     # 1-based global average rank of each tie block
  group_of = np.repeat(np.arange(starts.size), sizes)
  ranks = avg_rank[tie_id] - starts[group_of]
  n_pos = np.add.reduceat(y.astype(np.float64), starts)
  n_neg = sizes - n_pos
  rank_sum_pos = np.add.reduceat(np.where(y, ranks, 0.0), starts)
  ok = (n_pos > 0) & (n_neg > 0)
  if not ok.any():
    return float("nan"), 0.0
  group_auc = (rank_sum_pos[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2.0) / (n_pos[ok] * n_neg[ok])
  w = sizes[ok].astype(np.float64)
  return float((group_auc * w).sum() / w.sum()), float(w.sum() / y.size)


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
  y = np.asarray(labels, np.float64)
  p = np.clip(np.asarray(probs, np.float64), EPS, 1.0 - EPS)
  return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def evaluate(labels, probs, groups=None, weights=None) -> dict[str, float]:
  """All metrics for one split; rows with weight 0 are dropped first."""
  labels, probs = np.asarray(labels), np.asarray(probs)
  if weights is not None:
    keep = np.asarray(weights) > 0
    labels, probs = labels[keep], probs[keep]
    groups = None if groups is None else np.asarray(groups)[keep]
  out = {"auc": auc(labels, probs), "logloss": logloss(labels, probs), "rows": int(labels.size)}
  if groups is not None:
    out["gauc"], out["gauc_coverage"] = gauc(labels, probs, groups)
  return out
