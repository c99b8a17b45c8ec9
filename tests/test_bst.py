"""BST: shapes, invisible padding (content and amount) under every pooling, the candidate token,
gradients, dropout and config errors."""
import functools

import chex
import jax
import numpy as np
import pytest
from absl.testing import parameterized

from ctrjax.models import available, build_model
from tests.test_dien import LENGTHS, SCHEMA, B, D, T, _batch, _left_pad, _variables

SMALL = dict(embed_dim=D, num_heads=4, dnn={"hidden": (32, 16)})     # token width 2D + D (position) = 24
EXTRA = 3                                                    # extra left padding


def _model(**config):
  return build_model("bst", SCHEMA, {**SMALL, **config})


@functools.cache
def _forward(**config):
  """(jitted (variables, batch) -> outputs, variables for T + EXTRA slots)."""
  model = _model(**config)
  return jax.jit(model.apply), _variables(model, _left_pad(_batch(), EXTRA), train=False)


def _for_length(variables, slots):
  """The variables for ``slots`` behaviour slots: the position table is indexed by the distance to
  the candidate, so a shorter history uses its first slots + 1 rows."""
  params = dict(variables["params"])
  params["position_embedding"] = params["position_embedding"][:slots + 1]
  return {**variables, "params": params}


class BstTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_output_shape_and_finite(self):
    model = _model()
    out = self.variant(model.apply)(_variables(model, _batch(), train=False), _batch(1))
    assert set(out) == {"logit"}
    chex.assert_shape(out["logit"], (B,))
    chex.assert_tree_all_finite(out)

  @parameterized.parameters("concat", "target", "mean", "sum")
  def test_padding_content_and_amount_are_invisible(self, pooling):
    forward, long_variables = _forward(pooling=pooling)
    variables = (_variables(_model(pooling=pooling), _batch(), train=False) if pooling == "concat"
                 else _for_length(long_variables, T))
    clean = forward(variables, _batch(2))["logit"]
    chex.assert_trees_all_close(forward(variables, _batch(2, noisy_padding=True))["logit"], clean,
                                atol=1e-5, rtol=0)
    if pooling != "concat":        # concat's MLP input grows with T: no model for both lengths
      longer = forward(long_variables, _left_pad(_batch(2), EXTRA))["logit"]
      chex.assert_trees_all_close(longer, clean, atol=1e-5, rtol=0)
    changed = _batch(2)
    changed["behavior"]["hist_item_id"][:, -1] = 29           # a valid slot does matter
    delta = forward(variables, changed)["logit"] - clean
    assert np.abs(np.asarray(delta))[LENGTHS > 0].min() > 0

  def test_empty_history_attends_to_the_candidate_only(self):
    forward, long_variables = _forward(pooling="target")
    variables = _for_length(long_variables, T)
    empty = _batch(3, lengths=np.zeros(B, int))
    logit = forward(variables, empty)["logit"]
    chex.assert_tree_all_finite(logit)
    noisy = _batch(3, lengths=np.zeros(B, int), noisy_padding=True)
    chex.assert_trees_all_close(forward(variables, noisy)["logit"], logit, atol=1e-5, rtol=0)
    other = _batch(3, lengths=np.zeros(B, int))
    other["item"]["item_id"] = (other["item"]["item_id"] + 1) % 28 + 2
    assert np.abs(np.asarray(forward(variables, other)["logit"] - logit)).min() > 0

  def test_every_parameter_gets_a_gradient_and_dropout_acts_only_in_training(self):
    model = _model()
    variables, batch = _variables(model, _batch(), train=False), _batch(4)
    rngs = {"dropout": jax.random.PRNGKey(0)}

    @jax.jit
    def logits_and_grads(params):
      train_logits = lambda p: model.apply({"params": p}, batch, train=True, rngs=rngs)["logit"]
      return (train_logits(params), model.apply({"params": params}, batch)["logit"],
              jax.grad(lambda p: train_logits(p).sum())(params))
    train, evaluation, grads = logits_and_grads(variables["params"])
    dead = [jax.tree_util.keystr(path) for path, g in jax.tree_util.tree_leaves_with_path(grads)
            if np.abs(np.asarray(g)).max() < 1e-7]
    # A key bias shifts every score of a query alike, so the softmax cancels it.
    assert dead == ["['transformer_0']['attention']['key']['bias']"], dead
    chex.assert_tree_all_finite(train)
    assert np.abs(np.asarray(train - evaluation)).min() > 0

  def test_parameter_tree_follows_the_switches(self):
    shapes = lambda **config: jax.eval_shape(
        lambda: _model(**config).init(jax.random.PRNGKey(0), _batch(), train=False))["params"]
    params = shapes()
    chex.assert_shape(params["position_embedding"], (T + 1, D))
    chex.assert_shape(params["transformer_0"]["ffn_hidden"]["kernel"], (3 * D, 4 * 3 * D))
    # user 1 + item 3 + context 2 fields, then every token's output
    chex.assert_shape(params["mlp"]["Dense_0"]["kernel"], (6 * D + (T + 1) * 3 * D, 32))
    params = shapes(position="none", pooling="mean", num_layers=2)
    assert "position_embedding" not in params and "transformer_1" in params
    chex.assert_shape(params["mlp"]["Dense_0"]["kernel"], (6 * D + 2 * D, 32))

  @parameterized.parameters(
      ({"num_heads": 5}, r"BST token width 24 \(behaviour fields x model.embed_dim \+ position\) "
                         r"is not divisible by model.num_heads=5"),
      ({"pooling": "max"}, r"model.pooling='max'; choose from \('concat', 'target', 'mean', 'sum'\)"),
      ({"position": "time"}, "model.position='time'; choose from"),
      ({"num_layers": 0}, "model.num_layers=0"),
  )
  def test_bad_config_is_a_clear_error(self, config, message):
    with pytest.raises(ValueError, match=message):
      _model(**config)


def test_registry_finds_bst():
  assert "bst" in available()
