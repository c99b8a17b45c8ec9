"""Feature-interaction zoo (AutoInt, FM, AFM, NFM, Deep Crossing, DCN, DCNv2, xDeepFM, HOFM,
FinalMLP, FINAL): layers against their explicit formulas, shapes, config errors, and that every
model fits a planted signal."""
import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

from configs import autoint as autoint_config
from ctrjax.layers import FeatureEmbedding, pooled_fields
from ctrjax.layers.interaction import (CIN, CrossLayer, CrossLayerMix, CrossLayerV2, InteractingLayer,
                                       anova_kernel, bi_interaction, field_names, field_vectors,
                                       fm_pairwise, pairwise_products)
from ctrjax.models import build_model, get_model
from tests.test_models import B, SCHEMA, _batch

# (case, model, small config): every zoo model and its main switches, sized for a fast test.
CASES = (
    ("autoint", "autoint", dict(num_layers=2, attention_dim=8)),
    ("autoint_plus_official", "autoint", dict(num_layers=2, attention_dim=8, variant="official",
                                               dnn={"hidden": (16,)})),
    ("lr", "lr", {}),
    ("fm", "fm", {}),
    ("afm", "afm", {}),
    ("nfm", "nfm", dict(dnn={"hidden": (16,)})),
    ("deep_crossing", "deep_crossing", dict(residual_units=(16, 16))),
    ("crossnet", "dcn", dict(dnn={"hidden": ()})),
    ("dcn", "dcn", dict(dnn={"hidden": (16,)})),
    ("dcnv2_parallel", "dcnv2", dict(dnn={"hidden": (16,)})),
    ("dcnv2_mixture_stacked_parallel", "dcnv2", dict(dnn={"hidden": (16,)}, cross_type="low_rank_mixture",
                                                     low_rank=4, num_experts=2, structure="stacked_parallel")),
    ("cin", "xdeepfm", dict(cin_layers=(8, 8), dnn={"hidden": ()}, first_order=False)),
    ("xdeepfm", "xdeepfm", dict(cin_layers=(8, 8), split_half=False, dnn={"hidden": (16,)})),
    ("hofm", "hofm", dict(embed_dim=8)),                 # 2 orders x 8: the shapes of the other models
    ("finalmlp", "finalmlp", dict(dnn={"hidden": (16,)}, mlp2_hidden=(16, 16), fs_hidden=(16,),
                                  fs1_context=("user_id",))),
    ("final", "final", dict(block1_hidden=(16, 16), block2_hidden=(16,))),
)
CONFIGS = {case: (name, config) for case, name, config in CASES}
# Models whose planted-signal fit is also checked: every model file once (CrossNet and CIN alone are
# switches of DCN and xDeepFM) and AutoInt both ways.
FITTED = [case for case in CONFIGS if case not in ("crossnet", "cin", "dcnv2_parallel")]
F = len(field_names(SCHEMA))


def _init(name, **config):
  model = build_model(name, SCHEMA, config)
  return model, model.init(jax.random.PRNGKey(0), _batch(), train=False)


@functools.lru_cache(maxsize=None)
def _init_case(case):
  """(model, variables) of a CASES entry, initialised once (eager init compiles every op)."""
  name, config = CONFIGS[case]
  return _init(name, **config)


def _parameter_count(name, **config) -> int:
  """Parameters outside params["embedding"], from shapes alone (no compilation)."""
  model = build_model(name, SCHEMA, config)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), _batch(), train=False))
  return _count({k: v for k, v in shapes["params"].items() if k != "embedding"})


def _count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


class ZooShapeTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters((case, case) for case in CONFIGS)
  def test_logit_shape_and_finite_on_empty_history(self, case):
    model, variables = _init_case(case)
    apply = self.variant(lambda v, b: model.apply(v, b, train=False))
    for empty in (False, True):
      out = apply(variables, _batch(1, empty_history=empty))
      chex.assert_shape(out["logit"], (B,))
      chex.assert_tree_all_finite(out)


def test_field_vectors_follow_field_names_and_pool_the_history_by_mean():
  batch = _batch()
  layer = FeatureEmbedding(SCHEMA, dim=16)
  emb = layer.apply(layer.init(jax.random.PRNGKey(0), batch), batch)
  fields = field_vectors(emb, batch)
  pooled = pooled_fields(emb, batch["behavior"]["mask"], "mean")
  assert field_names(SCHEMA) == list(pooled) and fields.shape == (B, F, 16)
  chex.assert_trees_all_close(fields[:, field_names(SCHEMA).index("hist_item_id")],
                              emb["behavior"]["hist_item_id"][:, 2:].mean(1), atol=1e-6)


def test_pairwise_layers_equal_brute_force_sums():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 4))
  pairs = [(i, j) for i in range(5) for j in range(i + 1, 5)]
  brute = jnp.stack([x[:, i] * x[:, j] for i, j in pairs], axis=1)
  chex.assert_trees_all_close(pairwise_products(x), brute, atol=1e-6)
  chex.assert_trees_all_close(bi_interaction(x), brute.sum(1), atol=1e-5)


def test_hofm_anova_kernel_equals_brute_force_sums():
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 6, 4))
  triples = sum(x[:, i] * x[:, j] * x[:, k] for i, j, k in itertools.combinations(range(6), 3))
  chex.assert_trees_all_close(anova_kernel(x, 3), triples.sum(-1), atol=1e-4)
  chex.assert_trees_all_close(anova_kernel(x, 2), fm_pairwise(x), atol=1e-5)
  chex.assert_trees_all_close(anova_kernel(x, 1), x.sum((1, 2)), atol=1e-5)


def test_hofm_has_separate_factors_per_order():
  model = get_model("hofm")(schema=SCHEMA, embed_dim=5, order=4)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), _batch(), train=False))
  assert shapes["params"]["embedding"]["item_id"].shape == (30, 15)        # orders 2, 3, 4


def test_cross_layer_equals_its_formula():
  x0, x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 6))
  layer = CrossLayer()
  variables = layer.init(jax.random.PRNGKey(1), x0, x)
  w, b = jax.random.normal(jax.random.PRNGKey(2), (6, 1)), jax.random.normal(jax.random.PRNGKey(3), (6,))
  out = layer.apply({"params": {"kernel": w, "bias": b}}, x0, x)
  explicit = jnp.stack([jnp.outer(x0[n], x[n]) @ w[:, 0] + b + x[n] for n in range(4)])   # x0 x_lᵀ w + b + x_l
  chex.assert_trees_all_close(out, explicit, atol=1e-5)
  assert _count(variables) == 12                                           # w and b: 2·D


def test_dcnv2_full_rank_layer_equals_its_formula():
  x0, x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 6))
  layer = CrossLayerV2()
  params = layer.init(jax.random.PRNGKey(1), x0, x)["params"]
  w, b = params["dense"]["kernel"], params["dense"]["bias"] + 0.5
  out = layer.apply({"params": {"dense": {"kernel": w, "bias": b}}}, x0, x)
  explicit = jnp.stack([x0[n] * (w.T @ x[n] + b) + x[n] for n in range(4)])  # x0 ∘ (W x_l + b) + x_l
  chex.assert_trees_all_close(out, explicit, atol=1e-5)


def test_dcnv2_low_rank_mixture_shapes_and_one_expert_formula():
  x0, x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 6))
  layer = CrossLayerMix(low_rank=3, num_experts=5)
  params = layer.init(jax.random.PRNGKey(1), x0, x)["params"]
  chex.assert_shape([params["u"], params["v"], params["c"], params["gate"]["kernel"]],
                    [(5, 6, 3), (5, 6, 3), (5, 3, 3), (6, 5)])
  chex.assert_shape(layer.apply({"params": params}, x0, x), (4, 6))
  # One expert: the gate is 1 and the layer is x0 ∘ (U tanh(C tanh(Vᵀ x)) + b) + x.
  one = CrossLayerMix(low_rank=3, num_experts=1)
  p = one.init(jax.random.PRNGKey(2), x0, x)["params"]
  u, v, c, b = p["u"][0], p["v"][0], p["c"][0], jnp.full((6,), 0.3)
  p = {**p, "bias": b}
  explicit = jnp.stack([x0[n] * (u @ jnp.tanh(c @ jnp.tanh(v.T @ x[n])) + b) + x[n] for n in range(4)])
  chex.assert_trees_all_close(one.apply({"params": p}, x0, x), explicit, atol=1e-5)


@pytest.mark.parametrize("split_half", [True, False])
def test_cin_output_shape_and_parameters(split_half):
  x0 = jax.random.normal(jax.random.PRNGKey(0), (4, 5, 3))                  # F = 5, d = 3
  cin = CIN((6, 4, 2), split_half=split_half)
  variables = cin.init(jax.random.PRNGKey(1), x0)
  out = cin.apply(variables, x0)
  kernels = [variables["params"][f"layer{k}"]["kernel"].shape for k in range(3)]
  if split_half:   # halves of the non-final layers go out, halves feed the next layer
    chex.assert_shape(out, (4, 3 + 2 + 2))
    assert kernels == [(25, 6), (15, 4), (10, 2)]
  else:
    chex.assert_shape(out, (4, 6 + 4 + 2))
    assert kernels == [(25, 6), (30, 4), (20, 2)]


def test_cin_first_layer_equals_its_formula():
  x0 = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4))
  cin = CIN((2,))
  params = cin.init(jax.random.PRNGKey(1), x0)["params"]
  w = params["layer0"]["kernel"].reshape(3, 3, 2)                           # W^{1,h}_{ij}
  explicit = jnp.einsum("ijh,bid,bjd->bh", w, x0, x0)                       # Σ_d Σ_ij W_ij (x_i ∘ x_j)
  chex.assert_trees_all_close(cin.apply({"params": params}, x0), explicit, atol=1e-5)


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_autoint_attention_rows_sum_to_one(variant):
  model, variables = _init_case("autoint" if variant == "paper" else "autoint_plus_official")
  attention = model.apply(variables, _batch(1))["attention"]
  assert sorted(attention) == ["layer0", "layer1"]
  for a in attention.values():
    chex.assert_shape(a, (B, 2, F, F))
    chex.assert_trees_all_close(a.sum(-1), jnp.ones((B, 2, F)), atol=1e-5)
    assert np.all(np.asarray(a) >= 0)


@pytest.mark.parametrize("variant, bias", [("paper", 0), ("official", 1)])
def test_autoint_residual_adds_one_projection_per_layer(variant, bias):
  """W_Res maps d_in -> H·d' in each layer: 16·64 in the first, 64·64 in the others (+ biases in the
  official code); everything else is the same."""
  counts = {residual: _parameter_count("autoint", variant=variant, residual=residual) for residual in (True, False)}
  assert counts[True] - counts[False] == (16 * 64 + bias * 64) + 2 * (64 * 64 + bias * 64)


def test_autoint_paper_layer_matches_eq_5_to_8():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 3))                   # B, M, d
  layer = InteractingLayer(num_heads=2, head_dim=5)
  params = layer.init(jax.random.PRNGKey(1), x)["params"]
  out, attention = layer.apply({"params": params}, x)
  wq, wk, wv, wr = (params[n]["kernel"] for n in ("query", "key", "value", "residual"))
  for h in range(2):
    cols = slice(5 * h, 5 * h + 5)
    alpha = jax.nn.softmax((x @ wq[:, cols]) @ (x @ wk[:, cols]).swapaxes(1, 2), axis=-1)   # eq. 5
    chex.assert_trees_all_close(attention[:, h], alpha, atol=1e-5)
    combined = alpha @ (x @ wv[:, cols])                                                     # eq. 6
    chex.assert_trees_all_close(out[..., cols], jax.nn.relu(combined + x @ wr[:, cols]), atol=1e-5)  # eq. 8


def test_final_block_losses_distil_towards_the_ensemble_in_training_only():
  config = dict(block1_hidden=(16, 16), block2_hidden=(16,), batch_norm=False)
  model, variables = _init("final", **config)
  batch = _batch(2)
  assert "aux_loss" not in model.apply(variables, batch)
  aux = lambda m, b: float(m.apply(variables, b, train=True)["aux_loss"])   # noqa: E731
  base = aux(model, batch)
  assert base > 0
  doubled = build_model("final", SCHEMA, {**config, "block_loss_weight": 2.0})
  np.testing.assert_allclose(aux(doubled, batch), 2 * base, rtol=1e-6)
  assert "aux_loss" not in build_model("final", SCHEMA, {**config, "block_loss_weight": 0.0}).apply(
      variables, batch, train=True)
  # Rows with weight 0 (a last batch's padding) do not count: changing them changes nothing.
  padded = jax.tree.map(np.array, batch)
  padded["weight"][4:] = 0
  altered = jax.tree.map(np.array, padded)
  altered["item"]["item_id"][4:] = 3
  altered["user"]["user_id"][4:] = 5
  np.testing.assert_allclose(aux(model, altered), aux(model, padded), rtol=1e-6)
  assert abs(aux(model, padded) - base) > 1e-6


def test_config_errors_name_the_field():
  for name, config, message in (
      ("autoint", dict(variant="x"), r"model.variant='x'; choose from \('paper', 'official'\)"),
      ("dcnv2", dict(structure="x"), r"model.structure='x'; choose from"),
      ("dcnv2", dict(cross_type="x"), r"model.cross_type='x'; choose from"),
      ("dcnv2", dict(dnn={"hidden": ()}), r"model.dnn.hidden=\(\): structure='parallel' needs DNN widths"),
      ("xdeepfm", dict(cin_layers=(3, 4)), r"model.cin_layers=\(3, 4\): with split_half"),
      ("final", dict(block_type="3B"), r"model.block_type='3B'; choose from"),
      ("final", dict(residual_type="x"), r"model.residual_type='x'; choose from"),
      ("finalmlp", dict(fs1_context=("nope",)), r"model.fs1_context=\('nope',\): unknown field"),
      ("hofm", dict(order=1), r"model.order=1: expected >= 2"),
      ("fm", dict(pooling="max"), r"model.pooling='max'; choose from")):
    with pytest.raises(ValueError, match=message):
      _parameter_count(name, **config)


@pytest.mark.parametrize("arg, hidden, variant, epochs",
                         [("", (400, 400), "paper", 20), ("quick", (400, 400), "paper", 2),
                          ("plain", (), "paper", 20), ("plain,official,quick", (), "official", 2)])
def test_autoint_config(arg, hidden, variant, epochs):
  c = autoint_config.get_config(arg)
  assert (c.model_name, tuple(c.model.dnn.hidden), c.model.variant, c.num_epochs) == ("autoint", hidden, variant, epochs)
  assert (c.model.embed_dim, c.model.num_layers, c.model.num_heads, c.model.attention_dim) == (16, 3, 2, 32)
  build_model(c.model_name, SCHEMA, c.model)
  with pytest.raises(ValueError, match="configs/autoint.py: bad argument"):
    autoint_config.get_config("nope")


@pytest.mark.parametrize("case", FITTED)
def test_every_zoo_model_fits_a_planted_signal(case):
  """Labels say whether the candidate occurs in the history (the planted signal of test_din): 40
  Adam steps on one fixed batch lower the loss (BCE plus any aux_loss, as the train step)."""
  rng = np.random.default_rng(0)
  batch = jax.tree.map(lambda x: np.concatenate([x] * 8), _batch(6))
  batch["item"]["item_id"] = rng.integers(2, 30, len(batch["label"])).astype(np.int32)
  batch["label"] = (batch["behavior"]["hist_item_id"] == batch["item"]["item_id"][:, None]).any(1).astype(np.float32)
  model, variables = _init_case(case)
  tx = optax.adam(1e-2)

  def loss(params, stats, rng):
    out, upd = model.apply({"params": params, **stats}, batch, train=True, mutable=["batch_stats"],
                           rngs={"dropout": rng})
    bce = optax.sigmoid_binary_cross_entropy(out["logit"], batch["label"]).mean()
    return bce + out.get("aux_loss", 0.0), (bce, upd)

  @jax.jit
  def step(params, stats, opt, rng):
    (_, (bce, upd)), g = jax.value_and_grad(loss, has_aux=True)(params, stats, rng)
    updates, opt = tx.update(g, opt)
    return optax.apply_updates(params, updates), dict(upd), opt, bce

  params, stats = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  opt = tx.init(params)
  losses = []
  for i in range(40):
    params, stats, opt, value = step(params, stats, opt, jax.random.PRNGKey(i))
    losses.append(float(value))
  assert losses[-1] < 0.6 * losses[0], losses[::8]
