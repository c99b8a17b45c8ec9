"""MIAN and its layers: shapes under every switch, masks, attention weights, Pre-/Post-LN, gradients."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from ctrjax.data.schema import Field, Schema
from ctrjax.layers import ScoredAttentionPool, TransformerBlock, attention_pool, masked_softmax
from ctrjax.models import available, build_model, get_model

T, G, B, D = 6, 3, 8, 8
LENGTHS = np.array([0, T, 1, 3, T, 2, 5, 4])        # row 0 has no history, rows 1 and 4 are full
FIELDS = (
    Field("item_id", "item", "categorical", vocab_size=30),
    Field("item_genres", "item", "categorical", shape=(G,), vocab_size=7, table="genre"),
    Field("hist_item_id", "behavior", "sequence", shape=(T,), max_len=T, vocab_size=30, table="item_id"),
    Field("hist_genres", "behavior", "sequence", shape=(T, G), max_len=T, vocab_size=7, table="genre"),
    Field("user_id", "user", "categorical", vocab_size=11),
    Field("user_age", "user", "categorical", vocab_size=5),
    Field("hour", "context", "categorical", vocab_size=25),
    Field("price", "context", "numeric", dtype="float32"),
    Field("label", "label", "numeric", dtype="float32"),
)
SCHEMA = Schema(FIELDS)
SMALL = dict(embed_dim=D, num_heads=4)               # behaviour token width 2D = 16, 4 heads


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
               "item_genres": rng.integers(0, 7, (B, G)).astype(np.int32)},
      "behavior": {"hist_item_id": hist, "hist_genres": genres, "mask": mask},
      "user": {"user_id": rng.integers(2, 11, B).astype(np.int32),
               "user_age": rng.integers(2, 5, B).astype(np.int32)},
      "context": {"hour": rng.integers(2, 25, B).astype(np.int32),
                  "price": rng.random(B).astype(np.float32)},
      "label": rng.integers(0, 2, B).astype(np.float32), "weight": np.ones(B, np.float32),
  }


def _model(schema=SCHEMA, **switches):
  return build_model("mian", schema, {**SMALL, **switches})


def _variables(module, *args, **kwargs):
  """Variables of ``module.init(key, *args, **kwargs)``'s shapes with kernels and embeddings drawn
  by numpy (std 0.2), biases 0 and LayerNorm scales 1. The real initialisers compile one threefry
  program per parameter shape (~0.3 s each on CPU) and would dominate this file's time;
  test_initialisation_follows_the_paper checks them once."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args, **kwargs))
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    name = path[-1].key
    if name in ("bias", "scale"):
      return jnp.full(leaf.shape, float(name == "scale"), leaf.dtype)
    return jnp.asarray(rng.normal(0.0, 0.2, leaf.shape), leaf.dtype)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def _model_variables(model, batch=None):
  return _variables(model, _batch() if batch is None else batch, train=False)


SWITCHES = {
    "full": {},
    "no_iuim": {"use_iuim": False},                                   # Table 3 rows 2-6
    "no_icim": {"use_icim": False},
    "no_ibim": {"use_ibim": False},
    "no_gim": {"use_gim": False},
    "no_iuim_icim": {"use_iuim": False, "use_icim": False},
    "only_gim": {"use_ibim": False, "use_iuim": False, "use_icim": False},
    "post_ln_linear_no_positions": {"ibim_encoder": "post_ln", "score": "linear",
                                    "position_embedding": False},     # Table 4 row 2
    "no_encoder": {"ibim_encoder": "none", "position_embedding": False},  # Table 4 row 3
    "concat_no_iuim": {"gim_combine": "concat", "use_iuim": False},
    "no_behaviour_group": {"use_ibim": False, "use_behavior_mean": False},
}

# The three IBIM encoders, together covering the other non-default switches; compiled once each.
ENCODER_CONFIGS = (
    {},
    {"ibim_encoder": "post_ln", "gim_combine": "concat", "score": "linear"},
    {"ibim_encoder": "none", "use_gim": False},
)


@functools.cache
def _forward_and_grad(**switches):
  """Jitted batch -> (outputs, gradient of the summed logits w.r.t. every parameter)."""
  model = _model(**switches)
  params = _model_variables(model)["params"]

  def summed_logits(p, batch):
    out = model.apply({"params": p}, batch)
    return out["logit"].sum(), out

  @jax.jit
  def forward_and_grad(batch):
    grads, out = jax.grad(summed_logits, has_aux=True)(params, batch)
    return out, grads
  return forward_and_grad


class MianTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*SWITCHES.items())
  def test_output_shapes(self, switches):
    model = _model(**switches)
    out = self.variant(lambda v, b: model.apply(v, b, train=False))(_model_variables(model), _batch(1))
    on = {m: switches.get(f"use_{m}", True) for m in ("ibim", "iuim", "icim", "gim")}
    expected = {"ibim": (B, T), "iuim": (B, 2), "icim": (B, 2),
                "gim": (B, 3 + switches.get("use_behavior_mean", True) + on["ibim"] + on["iuim"] + on["icim"])}
    chex.assert_shape(out["logit"], (B,))
    assert set(out["attention"]) == {m for m in expected if on[m]}
    for name, alpha in out["attention"].items():
      chex.assert_shape(alpha, expected[name])
    assert len(model.gim_tokens()) == expected["gim"][1]
    chex.assert_tree_all_finite(out)

  @parameterized.parameters(*ENCODER_CONFIGS)
  def test_padded_slots_are_ignored_whatever_they_hold(self, **switches):
    forward = _forward_and_grad(**switches)
    clean, noisy = _batch(2), _batch(2, noisy_padding=True)
    assert (noisy["behavior"]["hist_item_id"] != 0).all()     # recomputing the mask would differ
    # Same outputs and same gradients: padded slots neither contribute nor get trained.
    chex.assert_trees_all_close(forward(clean), forward(noisy), atol=1e-6, rtol=0)
    changed = _batch(2)
    changed["behavior"]["hist_item_id"][:, -1] = 29           # a valid slot does matter
    delta = forward(changed)[0]["logit"] - forward(clean)[0]["logit"]
    assert np.abs(np.asarray(delta))[1:].min() > 0

  def test_attention_weights_are_distributions(self):
    attention = _forward_and_grad()(_batch(3))[0]["attention"]
    mask = _batch(3)["behavior"]["mask"]
    ibim = np.asarray(attention["ibim"])
    np.testing.assert_array_equal(ibim[~mask], 0.0)
    np.testing.assert_allclose(ibim.sum(-1), (LENGTHS > 0).astype(float), atol=1e-6)
    assert (ibim[mask] > 0).all()
    for name in ("iuim", "icim", "gim"):
      np.testing.assert_allclose(np.asarray(attention[name]).sum(-1), 1.0, atol=1e-6)

  @parameterized.parameters(*ENCODER_CONFIGS)
  def test_empty_history_is_finite_with_finite_gradients(self, **switches):
    out, grads = _forward_and_grad(**switches)(_batch(4, lengths=np.zeros(B, int)))
    chex.assert_tree_all_finite((out, grads))
    np.testing.assert_array_equal(out["attention"]["ibim"], 0.0)

  @parameterized.parameters(*ENCODER_CONFIGS)
  def test_every_parameter_gets_a_gradient(self, **switches):
    _, grads = _forward_and_grad(**switches)(_batch(5))
    # Not just != 0: a parameter that cancels in a softmax gets rounding noise (~1e-9).
    dead = [jax.tree_util.keystr(path) for path, g in jax.tree_util.tree_leaves_with_path(grads)
            if np.abs(np.asarray(g)).max() < 1e-7]
    assert not dead, f"parameters without gradient: {dead}"

  def test_without_ibim_and_behaviour_mean_the_behaviours_are_ignored(self):
    model = _model(use_ibim=False, use_behavior_mean=False)
    variables = _model_variables(model)
    batch, other = _batch(0), _batch(0)
    other["behavior"] = _batch(5)["behavior"]
    assert not np.array_equal(other["behavior"]["hist_item_id"], batch["behavior"]["hist_item_id"])
    chex.assert_trees_all_equal(model.apply(variables, batch)["logit"], model.apply(variables, other)["logit"])
    with_mean = _model(use_ibim=False)
    variables = _model_variables(with_mean)
    assert not np.allclose(with_mean.apply(variables, batch)["logit"], with_mean.apply(variables, other)["logit"])

  def test_ibim_ranks_behaviours_the_same_for_every_candidate(self):
    """Eq. 8 with one W: s_t = tanh(w_i · e_i + w_h · h_t + b) is monotone in w_h · h_t, so the order
    of the IBIM weights over a history does not depend on the candidate (README, planted signal)."""
    model = _model()
    variables = _model_variables(model)
    batch = _batch(0, lengths=[T] * B)
    history = {k: np.repeat(v[:1], B, axis=0) for k, v in batch["behavior"].items()}
    batch["behavior"] = history                                   # one history, B candidates
    alpha = np.asarray(model.apply(variables, batch)["attention"]["ibim"])
    assert not np.allclose(alpha, alpha[:1])                      # the weights do change ...
    order = np.argsort(alpha, axis=1)
    np.testing.assert_array_equal(order, np.repeat(order[:1], B, axis=0))   # ... their order does not

  def test_dropout_acts_only_in_training(self):
    model = _model()
    variables, batch = _model_variables(model), _batch(6)
    rngs = {"dropout": jax.random.PRNGKey(0)}
    train, again = (model.apply(variables, batch, train=True, rngs=rngs)["logit"] for _ in range(2))
    chex.assert_trees_all_close(train, again)
    eval_logit = model.apply(variables, batch)["logit"]
    chex.assert_tree_all_finite(train)
    assert np.abs(np.asarray(train - eval_logit)).min() > 0

  @parameterized.parameters("truncated_normal", "xavier_normal")
  def test_initialisation_follows_the_paper_except_the_dense_init_switch(self, dense_init):
    """Embedding and position tables: truncated normal (std init_std, cut at 2 std); biases 0,
    LayerNorm scale 1; Dense kernels follow dense_init and the MLP's dnn.kernel_init (the paper's
    truncated normal, or Xavier, the default, because with 0.02 everywhere the ReLU MLP dies; see the
    model docstring)."""
    model = _model(dense_init=dense_init, dnn={"kernel_init": dense_init})
    params = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(0), _batch())
    small, kernels = [], []
    for path, p in jax.tree_util.tree_leaves_with_path(params["params"]):
      p, leaf = np.asarray(p), path[-1].key
      if leaf in ("bias", "scale"):
        np.testing.assert_array_equal(p, float(leaf == "scale"), err_msg=jax.tree_util.keystr(path))
      elif path[0].key in ("embedding", "position_embedding") or dense_init == "truncated_normal":
        assert np.abs(p).max() <= 0.04, jax.tree_util.keystr(path)
        small.append(p.ravel())
      else:
        kernels.append((jax.tree_util.keystr(path), p.std()))
    assert 0.015 < np.concatenate(small).std() < 0.02            # 0.88 x 0.02 when cut at 2 std
    if dense_init == "xavier_normal":                            # Xavier: std sqrt(2/(fan_in+fan_out))
      assert len(kernels) > 10 and all(std > 0.05 for _, std in kernels), kernels

  def test_parameter_tree_follows_the_switches(self):
    shapes = lambda **switches: _model_variables(_model(**switches))["params"]
    params = shapes()
    chex.assert_shape(params["position_embedding"], (T, 2 * D))
    chex.assert_shape(params["ibim_attention"]["kernel"], (4 * D,))      # shared over t
    chex.assert_shape(params["iuim_attention"]["kernel"], (2, 3 * D))     # one per user field
    chex.assert_shape(params["gim_attention"]["kernel"], (7, 4 * D))     # D_g = 2 x item width
    chex.assert_shape(params["ibim_encoder"]["ffn_hidden"]["kernel"], (2 * D, 8 * D))
    assert set(params["ibim_encoder"]["attention"]["key"]) == {"kernel"}    # eq. 4: no biases
    chex.assert_shape(shapes(gim_width=12)["gim_attention"]["kernel"], (7, 12))
    params = shapes(ibim_encoder="none", position_embedding=False, gim_combine="concat")
    assert not {"ibim_encoder", "position_embedding", "gim_attention"} & set(params)
    chex.assert_shape(params["gim_score_R_ibim"]["kernel"], (4 * D, 1))

  def test_disabled_module_without_fields_is_fine_and_enabled_one_is_an_error(self):
    no_context = Schema(tuple(f for f in FIELDS if f.group != "context"))
    with pytest.raises(ValueError, match=r"use_icim=True but the dataset has no context fields; "
                                         r"set model.use_icim=False"):
      _model(no_context)
    batch = _batch()
    del batch["context"]
    model = _model(no_context, use_icim=False)
    out = model.apply(_model_variables(model, batch), batch)
    assert model.gim_tokens() == ("e_i", "e_b", "e_u", "R_ibim", "R_iuim")
    chex.assert_shape(out["attention"]["gim"], (B, 5))

  @parameterized.parameters(
      ({"num_heads": 3}, "not divisible by model.num_heads=3"),
      ({"ibim_encoder": "preln"}, "ibim_encoder='preln'"),
      ({"gim_combine": "mean"}, "gim_combine='mean'"),
      ({"score": "relu"}, "unknown attention score 'relu'"),
  )
  def test_bad_config_is_a_clear_error(self, switches, message):
    with pytest.raises(ValueError, match=message):
      _model(**switches)


class LayerTest(chex.TestCase, parameterized.TestCase):

  def test_masked_softmax_of_an_all_masked_row_is_zero(self):
    scores = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = jnp.array([[True, False, True], [False, False, False]])
    alpha = masked_softmax(scores, mask)
    expected = np.exp([1.0, 3.0]) / np.exp([1.0, 3.0]).sum()
    np.testing.assert_allclose(alpha, [[expected[0], 0.0, expected[1]], [0.0, 0.0, 0.0]], rtol=1e-6)
    grad = jax.grad(lambda s: (masked_softmax(s, mask) * jnp.arange(3.0)).sum())(scores)
    chex.assert_tree_all_finite(grad)
    np.testing.assert_array_equal(grad[1], 0.0)

  def test_attention_pool_matches_numpy(self):
    rng = np.random.default_rng(0)
    scores, values = rng.normal(size=(B, T)), rng.normal(size=(B, T, 5))
    mask = np.arange(T)[None, :] >= T - LENGTHS[:, None]
    pooled, alpha = attention_pool(jnp.asarray(scores, jnp.float32),
                                   jnp.asarray(values, jnp.float32), jnp.asarray(mask))
    weights = np.where(mask, np.exp(scores - scores.max(-1, keepdims=True)), 0.0)
    weights /= np.maximum(weights.sum(-1, keepdims=True), 1e-30)
    np.testing.assert_allclose(alpha, weights, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(pooled, np.einsum("bt,btd->bd", weights, values), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(pooled[0], 0.0)                 # empty history

  @parameterized.parameters(("tanh", False), ("tanh", True), ("linear", False), ("linear", True))
  def test_scored_attention_pool_scores_by_formula(self, score, per_token):
    values = jnp.asarray(np.random.default_rng(0).normal(size=(B, T, 5)), jnp.float32)
    mask = jnp.asarray(np.arange(T)[None, :] >= T - LENGTHS[:, None])
    pool = ScoredAttentionPool(score, per_token_weights=per_token)
    params = _variables(pool, values, mask)["params"]
    params = jax.tree.map(lambda p: p + 0.3, params)            # non-zero bias
    chex.assert_shape(params["kernel"], (T, 5) if per_token else (5,))
    assert ("bias" in params) == (per_token or score == "tanh")
    kernel = jnp.broadcast_to(params["kernel"], (T, 5))                  # shared: same w for all t
    raw = jnp.einsum("btd,td->bt", values, kernel) + params.get("bias", 0.0)
    pooled, alpha = pool.apply({"params": params}, values, mask)
    expected = attention_pool(jnp.tanh(raw) if score == "tanh" else raw, values, mask)
    chex.assert_trees_all_close((pooled, alpha), expected, atol=1e-5)

  def test_pre_ln_and_post_ln_differ_as_specified(self):
    x = jnp.asarray(np.random.default_rng(0).normal(1.0, 3.0, (B, T, 16)), jnp.float32)
    mask = jnp.asarray(np.arange(T)[None, :] >= T - LENGTHS[:, None])
    ln = lambda v: (v - v.mean(-1, keepdims=True)) / jnp.sqrt(v.var(-1, keepdims=True) + 1e-6)
    for norm, expected in (("pre_ln", x), ("post_ln", ln(x))):
      block = TransformerBlock(num_heads=4, norm=norm)
      params = _variables(block, x, mask, train=False)["params"]
      # Zero the residual branches' output kernels: Pre-LN is then the identity, Post-LN is LN(LN(x)).
      params["attention"]["out"]["kernel"] = jnp.zeros_like(params["attention"]["out"]["kernel"])
      params["ffn_out"]["kernel"] = jnp.zeros_like(params["ffn_out"]["kernel"])
      out = block.apply({"params": params}, x, mask, train=False)
      chex.assert_trees_all_close(out, expected, atol=1e-4)

  @parameterized.parameters("pre_ln", "post_ln")
  def test_transformer_block_never_attends_to_padding(self, norm):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(B, T, 16)), jnp.float32)
    mask = jnp.asarray(np.arange(T)[None, :] >= T - LENGTHS[:, None])
    block = TransformerBlock(num_heads=4, ffn_hidden=24, norm=norm)
    variables = _variables(block, x, mask, train=False)
    chex.assert_shape(variables["params"]["ffn_hidden"]["kernel"], (16, 24))
    noisy = jnp.where(mask[..., None], x, 100.0)
    out, out_noisy = (block.apply(variables, v, mask, train=False) for v in (x, noisy))
    chex.assert_trees_all_close(jnp.where(mask[..., None], out, 0.0),
                                jnp.where(mask[..., None], out_noisy, 0.0), atol=1e-5)
    assert not np.allclose(out, block.apply(variables, x, jnp.ones_like(mask), train=False))


def test_registry_finds_mian():
  assert "mian" in available()
  assert get_model("mian").__module__ == "ctrjax.models.mian"
