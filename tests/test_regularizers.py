"""Embedding regularisers: value vs brute-force numpy, gradient support, padding, zero counts,
cost independent of the table size (compiled HLO), config errors."""
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from ctrjax.data.schema import Field, Schema
from ctrjax.train.regularizers import EmbeddingRegularizer

B, T, G, K, D = 6, 5, 3, 2, 4
V_ITEM, V_GENRE, V_USER = 1009, 101, 53   # primes that match no batch dimension (HLO test)
SCHEMA = Schema((
    Field("item_id", "item", "categorical", vocab_size=V_ITEM),
    Field("bundle", "item", "categorical", shape=(K,), vocab_size=V_ITEM, table="item_id"),
    Field("item_genres", "item", "categorical", shape=(G,), vocab_size=V_GENRE, table="genre"),
    Field("hist_item_id", "behavior", "sequence", shape=(T,), max_len=T, vocab_size=V_ITEM,
          table="item_id"),
    Field("hist_genres", "behavior", "sequence", shape=(T, G), max_len=T, vocab_size=V_GENRE,
          table="genre"),
    Field("user_id", "user", "categorical", vocab_size=V_USER),
    Field("price", "context", "numeric", dtype="float32"),
    Field("label", "label", "numeric", dtype="float32"),
))
LAM = 0.3


def _counts(seed=0):
  rng = np.random.default_rng(seed)
  counts = {t: rng.integers(0, 6, v).astype(np.int64) for t, v in SCHEMA.tables.items()}
  for c in counts.values():
    c[1] = 0  # OOV is never counted in the training split
  return counts


def _tables(seed=0):
  rng = np.random.default_rng(seed)
  return {t: jnp.asarray(rng.normal(size=(v, D)), jnp.float32) for t, v in SCHEMA.tables.items()}


def _batch(seed=0):
  """Small ids so that they repeat within and across fields; padding (0) and OOV (1) included."""
  rng = np.random.default_rng(seed)
  ids = lambda hi, shape: rng.integers(0, hi, shape).astype(np.int32)  # noqa: E731
  hist = ids(30, (B, T))
  hist[:, :2] = 0
  item = ids(30, B)
  item[0] = hist[0, -1]  # the candidate also in its own history
  bundle = ids(30, (B, K))
  bundle[1, 0] = item[1]
  return {
      "item": {"item_id": item, "bundle": bundle, "item_genres": ids(12, (B, G))},
      "behavior": {"hist_item_id": hist, "hist_genres": ids(12, (B, T, G)), "mask": hist != 0},
      "user": {"user_id": ids(V_USER, B)},
      "context": {"price": rng.random(B).astype(np.float32)},
      "label": rng.integers(0, 2, B).astype(np.float32), "weight": np.ones(B, np.float32),
  }


def _slots(batch, table):
  """Every id of ``table`` in the batch, duplicates and padding included."""
  return np.concatenate([np.ravel(batch[f.group][f.name]) for f in SCHEMA.fields
                         if f.has_ids and f.table == table])


def _present(batch, table):
  """Ids >= 1 occurring anywhere in the batch in a field of ``table``."""
  return sorted(set(_slots(batch, table).tolist()) - {0})


def _brute_force(mode, tables, batch, counts):
  total = 0.0
  for t, v in SCHEMA.tables.items():
    w = np.asarray(tables[t], np.float64)
    rows = {"none": [], "full_table": range(1, v)}.get(mode, _present(batch, t))
    for j in rows:
      total += np.sum(w[j] ** 2) / (max(counts[t][j], 1) if mode == "mba" else 1)
  return LAM / 2 * total   # the paper's convention: lambda/2 * sum, so the gradient is lambda * w_j / n_j


class RegularizerTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("none", "mba", "touched", "full_table")
  def test_penalty_matches_brute_force(self, mode):
    counts, tables, batch = _counts(), _tables(), _batch()
    for t in ("item_id", "genre"):  # shared tables whose ids repeat across fields
      assert 0 < len(_present(batch, t)) < np.count_nonzero(_slots(batch, t)), t
    reg = EmbeddingRegularizer.build(SCHEMA, counts, mode, LAM)
    got = self.variant(reg.penalty)(tables, batch, reg.row_weights())
    chex.assert_shape(got, ())
    np.testing.assert_allclose(got, _brute_force(mode, tables, batch, counts), rtol=1e-5)
    if mode != "none":
      assert float(got) > 0

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("mba", "touched", "full_table")
  def test_gradient_support(self, mode):
    """mba/touched: exactly 0 off the batch's ids, lam*w_j/n_j on them (DIN eq. 7); never on padding."""
    counts, tables, batch = _counts(), _tables(), _batch()
    reg = EmbeddingRegularizer.build(SCHEMA, counts, mode, LAM)
    grads = self.variant(jax.grad(reg.penalty))(tables, batch, reg.row_weights())
    for t, v in SCHEMA.tables.items():
      g, w = np.asarray(grads[t]), np.asarray(tables[t])
      on = np.zeros(v, bool)
      on[range(1, v) if mode == "full_table" else _present(batch, t)] = True
      assert not on[0] and np.all(g[0] == 0), t
      assert np.all(g[~on] == 0), (t, np.flatnonzero(np.any(g[~on] != 0, axis=1)))
      scale = 1 / np.maximum(counts[t], 1) if mode == "mba" else np.ones(v)
      np.testing.assert_allclose(g[on], LAM * scale[on, None] * w[on], rtol=1e-5)
      assert np.all(np.any(g[on] != 0, axis=1)), t

  @parameterized.parameters("mba", "touched", "full_table")
  def test_padding_only_batch_is_free(self, mode):
    reg = EmbeddingRegularizer.build(SCHEMA, _counts(), mode, LAM)
    batch = jax.tree.map(np.zeros_like, _batch())
    got = reg.penalty(_tables(), batch, reg.row_weights())
    if mode == "full_table":
      assert float(got) > 0
    else:
      assert float(got) == 0.0

  def test_zero_count_ids_use_one(self):
    """OOV (1) and an id unseen in training get weight 1; an id seen 4 times 1/4."""
    counts, tables = _counts(), _tables()
    counts["item_id"][[7, 9]] = [0, 4]
    reg = EmbeddingRegularizer.build(SCHEMA, counts, "mba", 1.0, weight_convention="no_half")
    rw = reg.row_weights()
    np.testing.assert_array_equal(np.asarray(rw["item_id"])[[0, 1, 7, 9]], [0, 1, 1, 0.25])
    w = np.asarray(tables["item_id"])
    batch = jax.tree.map(np.zeros_like, _batch())
    for j, expected in ((1, np.sum(w[1] ** 2)), (7, np.sum(w[7] ** 2)), (9, np.sum(w[9] ** 2) / 4)):
      batch["behavior"]["hist_item_id"][:, -1] = j  # B occurrences, one present row
      np.testing.assert_allclose(reg.penalty(tables, batch, rw), expected, rtol=1e-6)

  def test_row_weights(self):
    counts = _counts()
    for mode in ("touched", "full_table"):
      rw = EmbeddingRegularizer.build(SCHEMA, {}, mode, LAM).row_weights()
      for t, v in SCHEMA.tables.items():
        np.testing.assert_array_equal(rw[t], np.r_[0.0, np.ones(v - 1)])
    rw = EmbeddingRegularizer.build(SCHEMA, counts, "mba", LAM).row_weights()
    for t in SCHEMA.tables:
      assert rw[t].dtype == jnp.float32
      np.testing.assert_allclose(rw[t][1:], 1 / np.maximum(counts[t][1:], 1), rtol=1e-7)
      assert rw[t][0] == 0
    assert EmbeddingRegularizer.build(SCHEMA, {}, "none", LAM).row_weights() == {}

  @parameterized.parameters("mba", "touched", "full_table")
  def test_compiled_cost_does_not_scale_with_table(self, mode):
    """Outside the table and row-weight parameters, no HLO value has the size of a table bigger
    than the batch's id slots (full_table is the control that shows the check can fail)."""
    reg = EmbeddingRegularizer.build(SCHEMA, _counts(), mode, LAM)
    hlo = jax.jit(reg.penalty).lower(_tables(), _batch(), reg.row_weights()).compile().as_text()
    instr = re.compile(r"^\s*(?:ROOT )?%?[\w.-]+ = (\(.*?\)|\S+) ([\w-]+)\(", re.M)
    ops = instr.findall(hlo)
    assert len(ops) > 20, hlo
    # Tables no bigger than their id slots in the batch take the dense-presence path, whose cost
    # is bounded by the slots; only tables bigger than their slots must never appear.
    batch = _batch()
    slots = {t: sum(np.size(batch[g][n]) for g, n in fields) for t, _, fields in reg.sources}
    big = {rows for t, rows, _ in reg.sources if rows > slots[t]}
    assert big, "the test needs a table bigger than its slots"
    table_sized = [(shape, op) for shape, op in ops if op != "parameter" and
                   big & {int(d) for dims in re.findall(r"\[([\d,]+)\]", shape) for d in dims.split(",")}]
    if mode == "full_table":
      assert table_sized
    else:
      assert not table_sized, table_sized


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="mbaa"), r"config\.regularizer\.mode='mbaa'"),
    (dict(weight=-0.1), r"config\.regularizer\.weight=-0\.1"),
    (dict(weight=float("nan")), r"config\.regularizer\.weight=nan"),
    (dict(weight_convention="half"), r"config\.regularizer\.weight_convention='half'"),
    (dict(counts={"genre": np.ones(V_GENRE), "user_id": np.ones(V_USER)}),
     r"table 'item_id' \(fields \['item_id', 'bundle', 'hist_item_id'\]\): missing"),
    (dict(counts={**_counts(), "genre": np.ones(V_GENRE - 1)}),
     r"table 'genre' .*shape \(100,\) != \(vocab_size=101,\)"),
    (dict(counts={**_counts(), "user_id": -np.ones(V_USER)}), r"table 'user_id' .*negative count"),
])
def test_build_errors_name_the_culprit(kwargs, match):
  args = dict(counts=_counts(), mode="mba", weight=LAM) | kwargs
  with pytest.raises(ValueError, match=match):
    EmbeddingRegularizer.build(SCHEMA, **args)


@pytest.mark.parametrize("mode", ["mba", "touched", "full_table"])
def test_no_half_convention_is_twice_the_paper_penalty(mode):
  """'no_half' (ctrjax before December 2026) penalises lambda * sum, the paper's lambda/2 * sum."""
  counts, tables, batch = _counts(), _tables(), _batch()
  paper = EmbeddingRegularizer.build(SCHEMA, counts, mode, LAM)
  no_half = EmbeddingRegularizer.build(SCHEMA, counts, mode, LAM, weight_convention="no_half")
  np.testing.assert_allclose(no_half.penalty(tables, batch, no_half.row_weights()),
                             2 * paper.penalty(tables, batch, paper.row_weights()), rtol=1e-6)
