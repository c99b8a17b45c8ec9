"""Vehicle models and shared layers: shapes (jit and no jit), padding semantics, registry errors."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from ctrjax.data.schema import Field, Schema
from ctrjax.layers import FeatureEmbedding, masked_mean
from ctrjax.models import available, get_model

T, G, B = 5, 3, 8
SCHEMA = Schema((
    Field("item_id", "item", "categorical", vocab_size=30),
    Field("item_genres", "item", "categorical", shape=(G,), vocab_size=7, table="genre"),
    Field("hist_item_id", "behavior", "sequence", shape=(T,), max_len=T, vocab_size=30, table="item_id"),
    Field("hist_genres", "behavior", "sequence", shape=(T, G), max_len=T, vocab_size=7, table="genre"),
    Field("user_id", "user", "categorical", vocab_size=11),
    Field("price", "context", "numeric", dtype="float32"),
    Field("label", "label", "numeric", dtype="float32"),
))


def _batch(seed=0, empty_history=False):
  rng = np.random.default_rng(seed)
  hist = rng.integers(2, 30, (B, T)).astype(np.int32)
  hist[:, :2] = 0
  if empty_history:
    hist[:] = 0
  genres = rng.integers(0, 7, (B, T, G)).astype(np.int32) * (hist[..., None] != 0)
  return {
      "item": {"item_id": rng.integers(2, 30, B).astype(np.int32),
               "item_genres": rng.integers(0, 7, (B, G)).astype(np.int32)},
      "behavior": {"hist_item_id": hist, "hist_genres": genres.astype(np.int32), "mask": hist != 0},
      "user": {"user_id": rng.integers(2, 11, B).astype(np.int32)},
      "context": {"price": rng.random(B).astype(np.float32)},
      "label": rng.integers(0, 2, B).astype(np.float32), "weight": np.ones(B, np.float32),
  }


class ModelTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("lr", "base_model", "din", "wide_deep", "pnn", "deepfm")
  def test_logit_shape_and_finite_on_empty_history(self, name):
    model = get_model(name)(schema=SCHEMA)
    variables = model.init(jax.random.PRNGKey(0), _batch(), train=False)
    apply = self.variant(lambda v, b: model.apply(v, b, train=False)["logit"])
    for empty in (False, True):
      logit = apply(variables, _batch(1, empty_history=empty))
      chex.assert_shape(logit, (B,))
      chex.assert_tree_all_finite(logit)

  def test_embedding_shapes_and_padding_is_exactly_zero(self):
    emb = FeatureEmbedding(SCHEMA, dim=4)
    batch = _batch()
    variables = emb.init(jax.random.PRNGKey(0), batch)
    out = emb.apply(variables, batch)
    chex.assert_shape(out["item"]["item_genres"], (B, 4))
    chex.assert_shape(out["behavior"]["hist_genres"], (B, T, 4))
    chex.assert_shape(out["context"]["price"], (B, 4))
    np.testing.assert_array_equal(out["behavior"]["hist_item_id"][:, :2], 0.0)
    # Behaviour and candidate ids share one table.
    assert set(variables["params"]) == {"item_id", "genre", "user_id", "numeric_price"}

  def test_padding_row_gets_no_gradient(self):
    model = get_model("base_model")(schema=SCHEMA)
    batch = _batch()
    variables = model.init(jax.random.PRNGKey(0), batch, train=False)
    grads = jax.grad(lambda p: model.apply({"params": p}, batch)["logit"].sum())(variables["params"])
    table_grad = grads["embedding"]["item_id"]
    assert jnp.all(table_grad[0] == 0) and jnp.any(table_grad[2:] != 0)

  def test_masked_mean_of_nothing_is_zero(self):
    x = jnp.ones((2, 3, 4))
    out = masked_mean(x, jnp.zeros((2, 3), bool), axis=1)
    chex.assert_trees_all_close(out, jnp.zeros((2, 4)))

  def test_base_model_history_changes_the_prediction(self):
    model = get_model("base_model")(schema=SCHEMA)
    b1, b2 = _batch(2), _batch(2)
    b2["behavior"]["hist_item_id"] = b2["behavior"]["hist_item_id"].copy()
    b2["behavior"]["hist_item_id"][:, -1] = 29
    variables = model.init(jax.random.PRNGKey(0), b1, train=False)
    l1, l2 = (model.apply(variables, b)["logit"] for b in (b1, b2))
    assert np.abs(np.asarray(l1 - l2)).max() > 0


def test_registry_lists_models_and_rejects_typos():
  assert {"lr", "base_model"} <= set(available())
  with pytest.raises(ValueError, match=r"'basemodel' is not a model; available: \["):
    get_model("basemodel")


BATCH_NORM_MODELS = sorted(n for n in available() if "batch_norm_momentum" in get_model(n).__dataclass_fields__)


@pytest.mark.parametrize("name", BATCH_NORM_MODELS)
def test_batch_norm_momentum_reaches_every_batch_norm(name):
  """One training step from the initial running mean 0: it moves by (1 − momentum)·(batch mean), so
  momentum 0.9 (PyTorch's 0.1) moves every BatchNorm's mean exactly 10× as far as 0.99."""
  batch, rng = _batch(), jax.random.PRNGKey(0)
  fields = get_model(name).__dataclass_fields__
  config = {"batch_norm": True, **({"hidden": (8,)} if fields.get("hidden") and fields["hidden"].default == () else {})}
  variables = get_model(name)(schema=SCHEMA, **config).init(rng, batch, train=False)
  means = {}
  for momentum in (0.99, 0.9):
    model = get_model(name)(schema=SCHEMA, **config, batch_norm_momentum=momentum)
    _, updated = model.apply(variables, batch, train=True, mutable=["batch_stats"], rngs={"dropout": rng})
    flat = jax.tree_util.tree_flatten_with_path(updated["batch_stats"])[0]
    means[momentum] = {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat
                       if p[-1].key == "mean" and "statistics" not in jax.tree_util.keystr(p)}  # not Dice's
  assert means[0.9], f"{name}: no BatchNorm with batch_norm=True"
  for path, mean in means[0.99].items():
    np.testing.assert_allclose(means[0.9][path], 10 * mean, rtol=1e-4, atol=1e-7, err_msg=path)


DNN_INIT_MODELS = sorted(n for n in available() if "dnn_kernel_init" in get_model(n).__dataclass_fields__)


@pytest.mark.parametrize("name", DNN_INIT_MODELS)
def test_dnn_kernel_init_reaches_the_dnn_and_rejects_unknown_names(name):
  """'torch_linear' draws every DNN kernel from U(±1/√fan_in) (PyTorch's nn.Linear); the default
  Xavier-normal has tails beyond that bound, so the switch must reach every DNN layer."""
  batch, rng = _batch(), jax.random.PRNGKey(0)
  fields = get_model(name).__dataclass_fields__
  config = {"hidden": (64, 32)} if "hidden" in fields else {}

  def dnn_kernels(init):
    params = get_model(name)(schema=SCHEMA, **config, dnn_kernel_init=init).init(
        rng, batch, train=False)["params"]
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat
            if "mlp" in p[0].key and p[-1].key == "kernel"}                 # the DNN towers

  torch_kernels, xavier_kernels = dnn_kernels("torch_linear"), dnn_kernels("xavier_normal")
  assert torch_kernels and torch_kernels.keys() == xavier_kernels.keys(), f"{name}: no DNN kernels found"
  for path, kernel in torch_kernels.items():
    assert np.abs(kernel).max() <= 1 / np.sqrt(kernel.shape[0]) + 1e-7, path
  assert any(np.abs(k).max() > 1 / np.sqrt(k.shape[0]) for k in xavier_kernels.values())
  with pytest.raises(ValueError, match=r"model.dnn_kernel_init='kaiming'; choose from"):
    get_model(name)(schema=SCHEMA, **config, dnn_kernel_init="kaiming").init(rng, batch, train=False)
