"""Vehicle models and shared layers: shapes (jit and no jit), padding semantics, registry errors."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from ctrjax.data.schema import Field, Schema
from ctrjax.layers import DNN, FeatureEmbedding, masked_mean
from ctrjax.models import available, build_model, default_config, get_model

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


def _has(name, field):
  return field in get_model(name).__dataclass_fields__


# The FESeq family also reads the behaviours' time gaps.
TIMED = Schema((*SCHEMA.fields, Field("hist_time_gap", "behavior", "numeric", dtype="float32", shape=(T,))))


def _inputs(name, seed=0):
  """(schema, batch) that model ``name`` can read."""
  if not _has(name, "time_gap_field"):
    return SCHEMA, _batch(seed)
  batch = _batch(seed)
  gaps = np.sort(np.random.default_rng(seed).random((B, T)) * 600, axis=1)[:, ::-1]
  batch["behavior"]["hist_time_gap"] = gaps.astype(np.float32)
  return TIMED, batch


DNN_MODELS = sorted(n for n in available() if _has(n, "dnn"))
# Models whose own (non-MLP) layers have a BatchNorm switch: Deep Crossing's residual units, FINAL's blocks.
BATCH_NORM_MODELS = sorted(n for n in available() if _has(n, "batch_norm_momentum"))


def _tower(**fields):
  """A model config with a small DNN of these fields (AutoInt, DCN and xDeepFM have none by default)."""
  return {"dnn": {"hidden": (8,), **fields}}


@pytest.mark.parametrize("name", available())
def test_every_model_with_an_mlp_tower_has_the_dnn_field(name):
  """The set of models with ``dnn`` is the set of models that build an MLP tower ("mlp" submodules)."""
  schema, batch = _inputs(name)
  config = _tower() if _has(name, "dnn") else {}
  model = build_model(name, schema, config)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch, train=False))
  towers = [k for k in shapes["params"] if "mlp" in k]
  assert bool(towers) == _has(name, "dnn"), (name, list(shapes["params"]))


@pytest.mark.parametrize("name", DNN_MODELS + BATCH_NORM_MODELS)
def test_batch_norm_momentum_reaches_every_batch_norm(name):
  """One training step from the initial running mean 0: it moves by (1 − momentum)·(batch mean), so
  momentum 0.9 (PyTorch's 0.1) moves every BatchNorm's mean exactly 10× as far as 0.99."""
  (schema, batch), rng = _inputs(name), jax.random.PRNGKey(0)

  def config(momentum):
    if _has(name, "dnn"):
      return _tower(batch_norm=True, batch_norm_momentum=momentum)
    return {"batch_norm": True, "batch_norm_momentum": momentum}

  variables = build_model(name, schema, config(0.99)).init(rng, batch, train=False)
  means = {}
  for momentum in (0.99, 0.9):
    model = build_model(name, schema, config(momentum))
    _, updated = model.apply(variables, batch, train=True, mutable=["batch_stats"], rngs={"dropout": rng})
    flat = jax.tree_util.tree_flatten_with_path(updated["batch_stats"])[0]
    means[momentum] = {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat
                       if p[-1].key == "mean" and "statistics" not in jax.tree_util.keystr(p)}  # not Dice's
  assert means[0.9], f"{name}: no BatchNorm with batch_norm=True"
  for path, mean in means[0.99].items():
    np.testing.assert_allclose(means[0.9][path], 10 * mean, rtol=1e-4, atol=1e-7, err_msg=path)


@pytest.mark.parametrize("name", DNN_MODELS)
def test_dnn_kernel_init_reaches_the_dnn_and_rejects_unknown_names(name):
  """'torch_linear' draws every DNN kernel from U(±1/√fan_in) (PyTorch's nn.Linear); the default
  Xavier-normal has tails beyond that bound, so the switch must reach every DNN layer."""
  (schema, batch), rng = _inputs(name), jax.random.PRNGKey(0)

  def dnn_kernels(init):
    params = build_model(name, schema, _tower(hidden=(64, 32), kernel_init=init)).init(
        rng, batch, train=False)["params"]
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat
            if "mlp" in p[0].key and p[-1].key == "kernel"}                 # the DNN towers

  torch_kernels, xavier_kernels = dnn_kernels("torch_linear"), dnn_kernels("xavier_normal")
  assert torch_kernels and torch_kernels.keys() == xavier_kernels.keys(), f"{name}: no DNN kernels found"
  for path, kernel in torch_kernels.items():
    assert np.abs(kernel).max() <= 1 / np.sqrt(kernel.shape[0]) + 1e-7, path
  assert any(np.abs(k).max() > 1 / np.sqrt(k.shape[0]) for k in xavier_kernels.values())
  with pytest.raises(ValueError, match=r"model.dnn.kernel_init='kaiming'; choose from"):
    build_model(name, schema, _tower(kernel_init="kaiming"))


def test_build_model_names_the_field_of_a_bad_config():
  with pytest.raises(ValueError, match=r"config.model does not fit model 'din': unexpected .*\['hidden'\]"):
    build_model("din", SCHEMA, {"hidden": (8,)})
  with pytest.raises(ValueError, match=r"config.model.dnn has no field\(s\) \['widths'\]"):
    build_model("din", SCHEMA, {"dnn": {"widths": (8,)}})
  with pytest.raises(ValueError, match=r"model.dnn.activation='relu6'; choose from"):
    build_model("din", SCHEMA, {"dnn": {"activation": "relu6"}})
  model = build_model("din", SCHEMA, {"dnn": {"hidden": [8, 4]}, "attention_hidden": [4]})  # JSON lists
  assert (model.dnn.hidden, model.dnn.activation, model.attention_hidden) == ((8, 4), "prelu", (4,))


def test_default_config_holds_every_field_and_types_its_overrides():
  c = default_config("din", dnn={"activation": "dice"}, embed_dim=8)
  assert set(c) == set(get_model("din").__dataclass_fields__) - {"schema", "parent", "name"}
  assert (c.embed_dim, c.dnn.activation, tuple(c.dnn.hidden)) == (8, "dice", (200, 80))
  c.attention_activation = "sigmoid"                               # None-valued, but typed str
  with pytest.raises(TypeError):
    c.attention_activation = 3
  with pytest.raises(ValueError, match=r"model 'din' has no field\(s\) \['hidden'\]"):
    default_config("din", hidden=(8,))
  assert build_model("din", SCHEMA, c).dnn == DNN((200, 80), "dice")
