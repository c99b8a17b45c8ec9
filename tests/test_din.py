"""DIN family: Dice, the local activation unit, DIN's mask invariance, interaction layers, and that
every Table 3 model learns."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

from ctrjax.layers import Dice, LocalActivationUnit
from ctrjax.layers.interaction import fm_pairwise, inner_products
from ctrjax.models import build_model, get_model
from ctrjax.models.wide_deep import hashed_cross
from tests.test_models import SCHEMA, _batch


def _dice_apply(x, train, variables=None):
  dice = Dice()
  variables = variables or dice.init(jax.random.PRNGKey(0), x, train=False)
  variables = {"params": {"alpha": jnp.full((x.shape[-1],), 0.25)}, "batch_stats": variables["batch_stats"]}
  return dice.apply(variables, x, train, mutable=["batch_stats"] if train else False)


def test_dice_uses_batch_statistics_in_training_and_running_ones_in_evaluation():
  x = jax.random.normal(jax.random.PRNGKey(1), (64, 5)) * 3.0 + 2.0
  out, updates = _dice_apply(x, train=True)
  # Training: p(s) = σ((s − mean) / std) over this batch.
  mean, var = x.mean(0), x.var(0)
  p = jax.nn.sigmoid((x - mean) / jnp.sqrt(var + 1e-8))
  chex.assert_trees_all_close(out, p * x + (1 - p) * 0.25 * x, atol=1e-5)
  # Running statistics moved towards the batch's (momentum 0.99).
  chex.assert_trees_all_close(updates["batch_stats"]["statistics"]["mean"], 0.01 * mean, atol=1e-6)
  # Training output of a row depends on the rest of the batch; evaluation output does not.
  shifted = x.at[1:].add(10.0)
  train_a, _ = _dice_apply(x, True)
  train_b, _ = _dice_apply(shifted, True)
  assert not np.allclose(train_a[0], train_b[0])
  variables = Dice().init(jax.random.PRNGKey(0), x, train=False)
  eval_a = _dice_apply(x, False, variables)
  eval_b = _dice_apply(shifted, False, variables)
  chex.assert_trees_all_close(eval_a[0], eval_b[0])
  # With the initial running stats (mean 0, var 1) evaluation is p = σ(s / √(1 + ε)).
  p0 = jax.nn.sigmoid(x / jnp.sqrt(1 + 1e-8))
  chex.assert_trees_all_close(eval_a, p0 * x + (1 - p0) * 0.25 * x, atol=1e-5)


def test_dice_on_identical_rows_is_finite():
  x = jnp.ones((16, 3, 4)) * 2.5                          # [B, T, H] like the attention MLP
  out, _ = _dice_apply(x, train=True)
  chex.assert_tree_all_finite(out)
  chex.assert_trees_all_close(out, 0.5 * x + 0.5 * 0.25 * x)  # Var = 0 -> p = 0.5


def test_dice_eq9_puts_epsilon_outside_the_square_root():
  """'dice_eq9' is eq. 9 as printed, σ((s − E) / (√Var + ε)); 'dice' is √(Var + ε) (official codes).
  With ε large enough to matter the two differ, each matching its own formula."""
  x = jax.random.normal(jax.random.PRNGKey(3), (64, 5)) * jnp.array([1e-3, 0.1, 1.0, 3.0, 10.0])
  alpha = np.full(5, 0.25, np.float32)
  mean, var = np.mean(np.asarray(x), 0), np.var(np.asarray(x), 0)
  for placement, denominator in (("outside_sqrt", np.sqrt(var) + 1e-2), ("inside_sqrt", np.sqrt(var + 1e-2))):
    dice = Dice(epsilon=1e-2, epsilon_placement=placement)
    variables = dice.init(jax.random.PRNGKey(0), x, train=False)
    variables = {**variables, "params": {"alpha": jnp.asarray(alpha)}}
    out, updates = dice.apply(variables, x, True, mutable=["batch_stats"])
    p = 1 / (1 + np.exp(-(np.asarray(x) - mean) / denominator))
    chex.assert_trees_all_close(out, p * x + (1 - p) * alpha * x, rtol=1e-4, atol=1e-6)
    stats = updates["batch_stats"]
    running_mean = stats["mean"] if placement == "outside_sqrt" else stats["statistics"]["mean"]
    chex.assert_trees_all_close(running_mean, 0.01 * mean, rtol=1e-4, atol=1e-7)   # momentum 0.99 from 0
  eq9 = Dice(epsilon_placement="outside_sqrt")
  out, _ = eq9.apply(eq9.init(jax.random.PRNGKey(0), jnp.ones((4, 3)), train=False), jnp.ones((4, 3)), True,
                     mutable=["batch_stats"])
  chex.assert_tree_all_finite(out)


def test_dice_rejects_unknown_variant():
  with pytest.raises(ValueError, match="Dice variant='x'"):
    Dice(variant="x").init(jax.random.PRNGKey(0), jnp.ones((2, 3)), train=False)


class LocalActivationUnitTest(parameterized.TestCase):

  @parameterized.parameters("raw", "softmax")
  def test_weights_at_padding_are_zero_and_pooling_matches(self, weighting):
    b, t, d = 4, 6, 8
    q, k = jax.random.normal(jax.random.PRNGKey(0), (b, d)), jax.random.normal(jax.random.PRNGKey(1), (b, t, d))
    mask = jnp.arange(t)[None, :] >= jnp.array([[0], [2], [5], [6]])   # last row: empty history
    lau = LocalActivationUnit(hidden=(8, 4), activation="sigmoid", weighting=weighting)
    variables = lau.init(jax.random.PRNGKey(2), q, k, mask)
    pooled, a = lau.apply(variables, q, k, mask)
    chex.assert_shape(a, (b, t))
    np.testing.assert_array_equal(np.asarray(a)[~np.asarray(mask)], 0.0)
    chex.assert_trees_all_close(pooled, jnp.einsum("bt,btd->bd", a, k), atol=1e-5)
    chex.assert_trees_all_close(pooled[3], jnp.zeros(d))
    if weighting == "softmax":
      chex.assert_trees_all_close(a[:3].sum(-1), jnp.ones(3), atol=1e-6)
    else:   # the paper's weights are not normalised
      assert not np.allclose(np.asarray(a[:3].sum(-1)), 1.0)


@pytest.mark.parametrize("weighting", ["raw", "softmax"])
@pytest.mark.parametrize("activation", ["prelu", "dice"])
def test_din_is_invariant_to_padding_contents_and_amount(weighting, activation):
  model = build_model("din", SCHEMA, {"attention_weighting": weighting, "dnn": {"activation": activation}})
  batch = _batch(3)
  variables = model.init(jax.random.PRNGKey(0), batch, train=False)
  # Garbage in the padded slots (ids stay 0, genres do not) must not matter ...
  scribbled = jax.tree.map(np.array, batch)
  scribbled["behavior"]["hist_genres"][:, :2] = 3
  # ... nor where the behaviours sit (DIN pools a set): move the padding to the other end.
  moved = jax.tree.map(np.array, batch)
  for name in ("hist_item_id", "hist_genres", "mask"):
    moved["behavior"][name] = np.roll(batch["behavior"][name], -2, axis=1)
  out_a = model.apply(variables, batch)
  for other in (scribbled, moved):
    chex.assert_trees_all_close(out_a["logit"], model.apply(variables, other)["logit"], atol=1e-5)
  np.testing.assert_array_equal(np.asarray(out_a["attention"]["din"])[:, :2], 0.0)


def test_din_attention_depends_on_the_candidate():
  model = get_model("din")(schema=SCHEMA)
  batch = _batch(4)
  variables = model.init(jax.random.PRNGKey(0), batch, train=False)
  other = jax.tree.map(lambda x: np.array(x), batch)
  other["item"]["item_id"] = (other["item"]["item_id"] + 5) % 28 + 2
  a1 = model.apply(variables, batch)["attention"]["din"]
  a2 = model.apply(variables, other)["attention"]["din"]
  assert np.abs(np.asarray(a1 - a2))[:, 2:].max() > 0


def test_fm_sum_square_equals_brute_force_pairs():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 4))
  brute = sum(jnp.sum(x[:, i] * x[:, j], -1) for i in range(5) for j in range(i + 1, 5))
  chex.assert_trees_all_close(fm_pairwise(x), brute, atol=1e-5)
  chex.assert_trees_all_close(inner_products(x).sum(-1), brute, atol=1e-5)
  chex.assert_shape(inner_products(x), (3, 10))
  chex.assert_trees_all_close(inner_products(x)[:, 1], jnp.sum(x[:, 0] * x[:, 2], -1), atol=1e-6)


def test_hashed_cross_is_in_range_and_separates_pairs():
  cand = jnp.arange(2, 202, dtype=jnp.int32)
  hist = jnp.tile(jnp.arange(2, 12, dtype=jnp.int32), (200, 1))
  buckets = hashed_cross(cand, hist, 2 ** 16)
  assert int(buckets.min()) >= 0 and int(buckets.max()) < 2 ** 16
  assert len(np.unique(np.asarray(buckets))) > 0.95 * buckets.size      # few collisions
  np.testing.assert_array_equal(buckets, hashed_cross(cand, hist, 2 ** 16))


def test_wide_deep_cross_weight_moves_only_for_present_pairs():
  model = get_model("wide_deep")(schema=SCHEMA, cross_buckets=97)
  batch = _batch(5)
  variables = model.init(jax.random.PRNGKey(0), batch, train=False)
  grads = jax.grad(lambda p: model.apply({"params": p}, batch)["logit"].sum())(variables["params"])
  present = np.asarray(hashed_cross(batch["item"]["item_id"], batch["behavior"]["hist_item_id"], 97))
  present = np.unique(present[np.asarray(batch["behavior"]["mask"])])
  g = np.asarray(grads["cross_weights"])
  assert np.all(g[present] != 0) and np.all(np.delete(g, present) == 0)


@pytest.mark.parametrize("name", ["base_model", "din", "wide_deep", "pnn", "deepfm"])
def test_every_table3_model_fits_a_planted_signal(name):
  """Labels depend on whether the candidate occurs in the history: every model should learn it
  within a few dozen Adam steps on one fixed batch."""
  rng = np.random.default_rng(0)
  batch = _batch(6)
  n = len(batch["label"])
  batch = jax.tree.map(lambda x: np.concatenate([x] * 8), batch)
  batch["item"]["item_id"] = rng.integers(2, 30, 8 * n).astype(np.int32)
  batch["label"] = (batch["behavior"]["hist_item_id"] == batch["item"]["item_id"][:, None]).any(1).astype(np.float32)
  model = build_model(name, SCHEMA, {"dnn": {"hidden": (16,)}})
  variables = model.init(jax.random.PRNGKey(0), batch, train=False)
  tx = optax.adam(1e-2)

  def loss(params, stats):
    out, upd = model.apply({"params": params, **stats}, batch, train=True, mutable=["batch_stats"])
    return optax.sigmoid_binary_cross_entropy(out["logit"], batch["label"]).mean(), upd

  @jax.jit
  def step(params, stats, opt):
    (value, upd), g = jax.value_and_grad(loss, has_aux=True)(params, stats)
    updates, opt = tx.update(g, opt)
    return optax.apply_updates(params, updates), dict(upd), opt, value

  params, stats = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  opt = tx.init(params)
  losses = []
  for _ in range(60):
    params, stats, opt, value = step(params, stats, opt)
    losses.append(float(value))
  assert losses[-1] < 0.7 * losses[0], losses[::10]


def test_frequency_filter_keeps_the_top_k_ids_and_maps_the_rest_to_oov():
  from ctrjax.data.filter import IdFrequencyFilter
  counts = {"item_id": np.array([0, 0, 5, 9, 1, 9, 3] + [0] * 23), "genre": np.ones(7), "user_id": np.ones(11)}
  filt = IdFrequencyFilter(SCHEMA, counts, "item_id", top_k=3)   # keeps 3, 5 (9 each), then 2 (5)
  batch = _batch(7)
  batch["item"]["item_id"] = np.array([2, 3, 4, 5, 6, 7, 0, 1], np.int32)
  out = filt(batch)
  np.testing.assert_array_equal(out["item"]["item_id"], [2, 3, 1, 5, 1, 1, 0, 1])
  hist = batch["behavior"]["hist_item_id"]
  expected = np.where(np.isin(hist, [0, 2, 3, 5]), hist, 1)
  np.testing.assert_array_equal(out["behavior"]["hist_item_id"], expected)
  np.testing.assert_array_equal(out["item"]["item_genres"], batch["item"]["item_genres"])   # other tables untouched
  assert batch["item"]["item_id"][2] == 4                                                     # input not mutated
  assert "keeping the 3 most frequent of 28 ids" in filt.summary
  with pytest.raises(ValueError, match="config.regularizer.filter_table='nope'"):
    IdFrequencyFilter(SCHEMA, counts, "nope", 3)


def test_id_dropout_discards_ids_in_training_only_and_keeps_the_expectation():
  from ctrjax.layers import FeatureEmbedding
  emb = FeatureEmbedding(SCHEMA, dim=4, embedding_init=jax.nn.initializers.ones, id_dropout=0.5)
  batch = jax.tree.map(lambda x: np.concatenate([x] * 64), _batch(8))
  variables = emb.init(jax.random.PRNGKey(0), batch)
  evaluation = emb.apply(variables, batch)
  training = emb.apply(variables, batch, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
  np.testing.assert_array_equal(evaluation["item"]["item_id"], 1.0)
  values = np.unique(np.asarray(training["item"]["item_id"]))
  np.testing.assert_array_equal(values, [0.0, 2.0])                       # dropped, or kept x 1/(1-p)
  assert 0.4 < np.mean(np.asarray(training["item"]["item_id"]) == 0) < 0.6
  np.testing.assert_array_equal(training["behavior"]["hist_item_id"][:, :2], 0.0)   # padding stays 0
  chex.assert_trees_all_close(training["behavior"]["hist_item_id"][:, 2:].mean(), 1.0, atol=0.05)
