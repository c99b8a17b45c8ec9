"""DIEN and its GRU layer: cell formulas of every gru_type, the masked scan, invisible padding,
the auxiliary loss (negatives, masks, gradients, learning) and config errors."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

from ctrjax.data.schema import Field, Schema
from ctrjax.layers.gru import GRU, AttentionalGRUCell
from ctrjax.models import available, get_model

T, G, B, D = 6, 3, 8, 8
LENGTHS = np.array([0, T, 1, 3, T, 2, 5, 4])        # row 0 has no history, rows 1 and 4 are full
SCHEMA = Schema((
    Field("item_id", "item", "categorical", vocab_size=30),
    Field("item_genres", "item", "categorical", shape=(G,), vocab_size=7, table="genre"),
    Field("item_year", "item", "categorical", vocab_size=9),
    Field("hist_item_id", "behavior", "sequence", shape=(T,), max_len=T, vocab_size=30, table="item_id"),
    Field("hist_genres", "behavior", "sequence", shape=(T, G), max_len=T, vocab_size=7, table="genre"),
    Field("user_id", "user", "categorical", vocab_size=11),
    Field("hour", "context", "categorical", vocab_size=25),
    Field("price", "context", "numeric", dtype="float32"),
    Field("label", "label", "numeric", dtype="float32"),
))


def _batch(seed=0, lengths=LENGTHS, noisy_padding=False):
  """Left-padded histories of the given lengths; with ``noisy_padding`` the padded slots hold
  arbitrary non-zero ids and genres (the mask alone says they are padding)."""
  rng = np.random.default_rng(seed)
  mask = np.arange(T)[None, :] >= T - np.asarray(lengths)[:, None]
  hist = rng.integers(2, 30, (B, T)).astype(np.int32)
  genres = rng.integers(1, 7, (B, T, G)).astype(np.int32)
  if not noisy_padding:
    hist, genres = hist * mask, genres * mask[..., None]
  return {
      "item": {"item_id": rng.integers(2, 30, B).astype(np.int32),
               "item_genres": rng.integers(0, 7, (B, G)).astype(np.int32),
               "item_year": rng.integers(2, 9, B).astype(np.int32)},
      "behavior": {"hist_item_id": hist, "hist_genres": genres, "mask": mask},
      "user": {"user_id": rng.integers(2, 11, B).astype(np.int32)},
      "context": {"hour": rng.integers(2, 25, B).astype(np.int32),
                  "price": rng.random(B).astype(np.float32)},
      "label": rng.integers(0, 2, B).astype(np.float32), "weight": np.ones(B, np.float32),
  }


def _left_pad(batch, extra, seed=0):
  """The same behaviours behind ``extra`` more padded slots of random content: [B, T + extra]."""
  rng = np.random.default_rng(seed)
  behavior = dict(batch["behavior"])
  for name, x in behavior.items():
    noise = (np.zeros((B, extra), bool) if name == "mask"
             else rng.integers(1, 7, (B, extra, *x.shape[2:])).astype(x.dtype))
    behavior[name] = np.concatenate([noise, x], axis=1)
  return {**batch, "behavior": behavior}


def _variables(module, *args, **kwargs):
  """Variables of ``module.init``'s shapes, kernels drawn by numpy (std 0.2), biases 0 and the
  batch statistics at their initial values (mean 0, var 1): the real initialisers compile one
  program per parameter shape, which would dominate this file's time."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args, **kwargs))
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    name = path[-1].key
    if name in ("bias", "mean", "var", "scale"):
      return jnp.full(leaf.shape, float(name in ("var", "scale")), leaf.dtype)
    return jnp.asarray(rng.normal(0.0, 0.2, leaf.shape), leaf.dtype)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def _model(**config):
  return get_model("dien")(schema=SCHEMA, embed_dim=D, **config)


@functools.cache
def _forward(**config):
  """Jitted evaluation forward, batch -> outputs, with fixed variables (their shapes do not
  depend on T)."""
  model = _model(**config)
  variables = _variables(model, _batch(), train=False)
  forward = jax.jit(model.apply)
  return lambda batch: forward(variables, batch)


@functools.cache
def _train_forward_and_grads():
  """Jitted (params, batch, rng) -> (training outputs, grads of Σ logit, grads of aux_loss), and
  initial params; one compilation serves every training test. The auxiliary net uses ReLU
  (FuxiCTR): the official sigmoid net learns too, but only after a ~100-step plateau."""
  model = _model(aux_activation="relu")
  variables = _variables(model, _batch(), train=False)

  def losses(params, batch, rng):
    out, _ = model.apply({**variables, "params": params}, batch, train=True, rngs={"dropout": rng},
                         mutable=["batch_stats"])
    return jnp.stack([out["logit"].sum(), out["aux_loss"]]), out

  @jax.jit
  def forward_and_grads(params, batch, rng):
    grads, out = jax.jacrev(losses, has_aux=True)(params, batch, rng)
    return out, jax.tree.map(lambda g: g[0], grads), jax.tree.map(lambda g: g[1], grads)
  return forward_and_grads, variables["params"]


def _train(batch, rng, params=None):
  forward_and_grads, initial = _train_forward_and_grads()
  return forward_and_grads(initial if params is None else params, batch, rng)


# Every gru_type, the AUGRU variants and both attention types, each compiled once.
EVOLUTION_CONFIGS = (
    {"gru_type": "gru"},
    {"gru_type": "aigru", "attention_type": "bilinear"},
    {"gru_type": "agru"},
    {},                                                       # augru, official_tf, din_fcn
    {"gru_type": "augru", "augru_variant": "paper", "attention_type": "bilinear",
     "use_sum_pooling_features": False},
)


class GRUCellTest(parameterized.TestCase):

  def _cell_and_reference(self, gru_type, augru_variant="paper"):
    """The cell's variables and a numpy step h' = (1 − s) h + s c with the TF conventions."""
    cell = AttentionalGRUCell(5, gru_type, augru_variant)
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
    x = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
    variables = cell.init(jax.random.PRNGKey(0), h, (x, jnp.ones(4), jnp.ones(4, bool)))
    p = jax.tree.map(np.asarray, variables["params"])
    sigmoid = lambda v: 1.0 / (1.0 + np.exp(-v))

    def reference(x, a):
      x = a[:, None] * x if gru_type == "aigru" else x
      gates = sigmoid(np.concatenate([x, h], -1) @ p["gates"]["kernel"] + p["gates"]["bias"])
      r, z = gates[:, :5], gates[:, 5:]
      c = np.tanh(np.concatenate([x, r * h], -1) @ p["candidate"]["kernel"] + p["candidate"]["bias"])
      return z, c
    return cell, variables, h, x, reference

  def test_gate_biases_start_like_tensorflow(self):
    _, variables, *_ = self._cell_and_reference("gru")
    np.testing.assert_array_equal(variables["params"]["gates"]["bias"], [1.0] * 5 + [-1.0] * 5)
    np.testing.assert_array_equal(variables["params"]["candidate"]["bias"], 0.0)

  @parameterized.parameters(("gru", "paper"), ("aigru", "paper"), ("agru", "paper"),
                            ("augru", "paper"), ("augru", "official_tf"))
  def test_step_matches_the_formula(self, gru_type, variant):
    cell, variables, h, x, reference = self._cell_and_reference(gru_type, variant)
    a = np.array([0.0, 0.3, 0.7, 1.0], np.float32)
    z, c = reference(np.asarray(x), a)
    a_ = a[:, None]
    share = {"gru": z, "aigru": z, "agru": np.broadcast_to(a_, z.shape), "augru": a_ * z}[gru_type]
    if variant == "official_tf":
      share = 1.0 - (1.0 - a_) * (1.0 - z)
    expected = (1.0 - share) * np.asarray(h) + share * c
    new, out = cell.apply(variables, h, (x, jnp.asarray(a), jnp.ones(4, bool)))
    np.testing.assert_allclose(new, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(new, out)

  def test_augru_with_zero_attention_keeps_the_state_exactly(self):
    cell, variables, h, x, _ = self._cell_and_reference("augru", "paper")
    new, _ = cell.apply(variables, h, (x, jnp.zeros(4), jnp.ones(4, bool)))
    np.testing.assert_array_equal(new, h)

  def test_official_augru_with_zero_attention_is_a_plain_gru_step(self):
    cell, variables, h, x, _ = self._cell_and_reference("augru", "official_tf")
    gru, gru_variables, *_ = self._cell_and_reference("gru")
    new, _ = cell.apply(variables, h, (x, jnp.zeros(4), jnp.ones(4, bool)))
    plain, _ = gru.apply(gru_variables, h, (x, jnp.ones(4), jnp.ones(4, bool)))
    np.testing.assert_allclose(new, plain, rtol=1e-6, atol=1e-7)

  def test_agru_with_full_attention_is_the_candidate(self):
    cell, variables, h, x, reference = self._cell_and_reference("agru")
    new, _ = cell.apply(variables, h, (x, jnp.ones(4), jnp.ones(4, bool)))
    _, c = reference(np.asarray(x), np.ones(4, np.float32))
    np.testing.assert_allclose(new, c, rtol=1e-6, atol=1e-7)
    assert not np.allclose(new, h)

  def test_invalid_step_keeps_the_state(self):
    cell, variables, h, x, _ = self._cell_and_reference("gru")
    new, _ = cell.apply(variables, h, (x, jnp.ones(4), jnp.array([True, False, True, False])))
    np.testing.assert_array_equal(new[1::2], h[1::2])
    assert not np.allclose(new[::2], h[::2])


class GRUTest(chex.TestCase):

  def test_left_padding_is_invisible_and_the_final_state_follows_the_newest_step(self):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(B, T, 3)), jnp.float32)
    mask = jnp.asarray(np.arange(T)[None, :] >= T - LENGTHS[:, None])
    gru = GRU(4, "augru", "paper")
    a = jnp.asarray(rng.random((B, T)), jnp.float32)
    variables = gru.init(jax.random.PRNGKey(0), x, mask, a)
    outputs, final = gru.apply(variables, x, mask, a)
    chex.assert_shape((outputs, final), ((B, T, 4), (B, 4)))
    np.testing.assert_array_equal(final, outputs[:, -1])
    np.testing.assert_array_equal(outputs[~np.asarray(mask)], 0.0)       # leading padding: h_0 = 0
    # The valid suffix of a row run on its own gives the same final state.
    row, length = 3, LENGTHS[3]
    _, alone = gru.apply(variables, x[row:row + 1, T - length:], mask[row:row + 1, T - length:],
                         a[row:row + 1, T - length:])
    np.testing.assert_allclose(alone[0], final[row], rtol=1e-6, atol=1e-6)
    # Noise at padded steps changes nothing.
    noisy = jnp.where(mask[..., None], x, 50.0)
    chex.assert_trees_all_equal(gru.apply(variables, noisy, mask, jnp.where(mask, a, 0.9)),
                                (outputs, final))

  def test_attention_is_required_exactly_by_the_attentional_types(self):
    x, mask = jnp.ones((2, 3, 4)), jnp.ones((2, 3), bool)
    with pytest.raises(ValueError, match="gru_type='augru' needs attention scores"):
      GRU(4, "augru").init(jax.random.PRNGKey(0), x, mask)
    with pytest.raises(ValueError, match="gru_type='gru' takes no attention scores"):
      GRU(4).init(jax.random.PRNGKey(0), x, mask, jnp.ones((2, 3)))


class DienTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_output_shapes_and_attention_weights(self):
    model = _model()
    out = self.variant(model.apply)(_variables(model, _batch(), train=False), _batch(1))
    assert set(out) == {"logit", "attention"}                 # no aux_loss in evaluation
    chex.assert_shape((out["logit"], out["attention"]["evolution"]), ((B,), (B, T)))
    chex.assert_tree_all_finite(out)
    alpha, mask = np.asarray(out["attention"]["evolution"]), _batch(1)["behavior"]["mask"]
    np.testing.assert_array_equal(alpha[~mask], 0.0)
    np.testing.assert_allclose(alpha.sum(-1), (LENGTHS > 0).astype(float), atol=1e-6)

  @parameterized.parameters(*EVOLUTION_CONFIGS)
  def test_padding_content_and_amount_are_invisible(self, **config):
    forward = _forward(**config)
    clean = forward(_batch(2))
    chex.assert_trees_all_close(forward(_batch(2, noisy_padding=True)), clean, atol=1e-6, rtol=0)
    longer = forward(_left_pad(_batch(2), extra=3))
    chex.assert_trees_all_close(longer["logit"], clean["logit"], atol=1e-6, rtol=0)
    assert ("attention" in clean) == (config.get("gru_type") != "gru")
    if "attention" in clean:
      alpha = longer["attention"]["evolution"]
      np.testing.assert_array_equal(alpha[:, :3], 0.0)
      chex.assert_trees_all_close(alpha[:, 3:], clean["attention"]["evolution"], atol=1e-6, rtol=0)
    changed = _batch(2)
    changed["behavior"]["hist_item_id"][:, -1] = 29           # a valid slot does matter
    delta = forward(changed)["logit"] - clean["logit"]
    assert np.abs(np.asarray(delta))[1:].min() > 0

  def test_empty_history_is_finite_and_its_auxiliary_loss_is_zero(self):
    empty = _batch(3, lengths=np.zeros(B, int))
    chex.assert_tree_all_finite(_forward()(empty))
    out, logit_grads, aux_grads = _train(empty, jax.random.PRNGKey(0))
    chex.assert_tree_all_finite((out, logit_grads, aux_grads))
    assert float(out["aux_loss"]) == 0.0

  def test_every_parameter_gets_a_gradient_and_the_aux_loss_trains_the_extractor(self):
    out, logit_grads, aux_grads = _train(_batch(4), jax.random.PRNGKey(0))
    assert float(out["aux_loss"]) > 0.0
    both = jax.tree.map(lambda a, b: np.abs(np.asarray(a)).max() + np.abs(np.asarray(b)).max(),
                        logit_grads, aux_grads)
    dead = [jax.tree_util.keystr(path) for path, g in jax.tree_util.tree_leaves_with_path(both)
            if g < 1e-7]
    # The attention scorer's output bias shifts every score of a row alike, so the softmax cancels it.
    assert dead == ["['attention']['scorer']['Dense_2']['bias']"], dead
    for name in ("interest_extractor", "aux_net"):
      assert max(np.abs(np.asarray(g)).max() for g in jax.tree.leaves(aux_grads[name])) > 1e-6
    # The auxiliary loss does not reach the evolution layer or the DNN.
    for name in ("interest_evolving", "mlp"):
      assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(aux_grads[name]))

  def test_aux_loss_ignores_padding_and_drops_negatives_of_the_positive_item(self):
    aux_loss = lambda batch, seed: float(_train(batch, jax.random.PRNGKey(seed))[0]["aux_loss"])
    clean = aux_loss(_batch(5), 1)
    # Negatives are drawn from valid slots only: padding content changes nothing.
    np.testing.assert_allclose(aux_loss(_batch(5, noisy_padding=True), 1), clean, rtol=1e-6)
    # ... and they are resampled with the rng.
    assert aux_loss(_batch(5), 2) != clean
    # When every behaviour is the same item (genres still differ), every negative has the positive's
    # item id and is dropped, so the loss no longer depends on the draw.
    same = _batch(5)
    same["behavior"]["hist_item_id"] = np.where(same["behavior"]["mask"], 7, 0).astype(np.int32)
    losses = [aux_loss(same, seed) for seed in range(3)]
    assert losses[0] > 0 and losses == [losses[0]] * 3

  def test_aux_loss_learns_planted_structure(self):
    """Each history repeats one item, so e_{t+1} matches h_t and the negatives (other rows'
    items) do not: a few Adam steps on the auxiliary loss alone bring it down."""
    batch = _batch(6)
    mask = batch["behavior"]["mask"]
    batch["behavior"]["hist_item_id"] = np.where(mask, np.arange(2, 2 + B)[:, None], 0).astype(np.int32)
    batch["behavior"]["hist_genres"] = np.where(mask[..., None], batch["behavior"]["hist_genres"][:, -1:],
                                                0).astype(np.int32)
    tx = optax.adam(1e-2)
    update = jax.jit(lambda grads, state, params: tx.update(grads, state, params))
    params = _train_forward_and_grads()[1]
    opt_state, losses = tx.init(params), []
    for seed in range(30):
      out, _, aux_grads = _train(batch, jax.random.PRNGKey(seed), params)
      updates, opt_state = update(aux_grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      losses.append(float(out["aux_loss"]))
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:5]), losses

  def test_aux_loss_alpha_zero_removes_the_auxiliary_net(self):
    model = _model(aux_loss_alpha=0.0)
    variables = _variables(model, _batch(), train=False)
    assert "aux_net" not in variables["params"]
    out, _ = jax.eval_shape(lambda: model.apply(variables, _batch(), train=True, mutable=["batch_stats"],
                                                rngs={"dropout": jax.random.PRNGKey(0)}))
    assert "aux_loss" not in out

  def test_parameter_tree_follows_the_switches(self):
    params = _variables(_model(), _batch(), train=False)["params"]
    width = 2 * D                                                  # item id ⊕ genres
    chex.assert_shape(params["interest_extractor"]["cell"]["gates"]["kernel"], (2 * width, 2 * width))
    chex.assert_shape(params["attention_query"]["kernel"], (width, width))
    chex.assert_shape(params["aux_net"]["Dense_0"]["kernel"], (2 * width, 100))
    # user 1 + item 3 + Σe, e_a∘Σe + h'_T + context 2 fields
    chex.assert_shape(params["mlp"]["Dense_0"]["kernel"], (D * 6 + 3 * width, 200))
    params = _variables(_model(gru_units=12, attention_type="bilinear", use_sum_pooling_features=False),
                        _batch(), train=False)["params"]
    chex.assert_shape(params["bilinear_attention"], (12, width))
    assert "attention_query" not in params
    chex.assert_shape(params["mlp"]["Dense_0"]["kernel"], (D * 6 + 12, 200))

  @parameterized.parameters(
      ({"gru_type": "lstm"}, r"model.gru_type='lstm'; choose from \('gru', 'aigru', 'agru', 'augru'\)"),
      ({"augru_variant": "tf"}, "model.augru_variant='tf'; choose from"),
      ({"attention_type": "dot"}, "model.attention_type='dot'; choose from"),
      ({"aux_loss_alpha": -1.0}, "model.aux_loss_alpha=-1.0"),
  )
  def test_bad_config_is_a_clear_error(self, config, message):
    with pytest.raises(ValueError, match=message):
      _model(**config)


def test_registry_finds_dien():
  assert "dien" in available()
