"""DMR: invisible padding (content and amount), the item-to-item attention, the auxiliary match
loss (rows it counts, gradients), parameters and config errors."""
import functools

import chex
import jax
import numpy as np
import pytest

from ctrjax.models import available, build_model
from tests.test_feseq import (EXTRA, LENGTHS, RNG, SCHEMA, D, T, _batch, _change_item, _left_pad,
                              _variables)

SMALL = dict(embed_dim=D, position_dim=4, attention_hidden=(16,), dnn={"hidden": (32, 16)}, num_negatives=3)
RNGS = {"dropout": RNG}


def _model(**config):
  return build_model("dmr", SCHEMA, {**SMALL, **config})


@functools.cache
def _forward():
  """(jitted (variables, batch) -> outputs, variables for T + EXTRA slots)."""
  model = _model()
  return jax.jit(model.apply), _variables(model, _left_pad(_batch(), EXTRA), train=False)


def _for_length(variables, slots):
  """The position tables are indexed by the distance to the newest behaviour: a shorter history
  uses their first ``slots`` rows."""
  params = dict(variables["params"])
  for table in ("i2i_position", "u2i_position"):
    params[table] = params[table][:slots]
  return {**variables, "params": params}


def test_padding_content_and_amount_are_invisible():
  forward, long_variables = _forward()
  variables = _for_length(long_variables, T)
  clean = forward(variables, _batch(2))
  chex.assert_tree_all_finite(clean)
  chex.assert_trees_all_close(forward(variables, _batch(2, noisy_padding=True)), clean, atol=1e-5, rtol=0)
  longer = forward(long_variables, _left_pad(_batch(2), EXTRA))
  chex.assert_trees_all_close(longer["logit"], clean["logit"], atol=1e-5, rtol=0)
  alpha = np.asarray(clean["attention"]["item_to_item"])
  valid = np.arange(T)[None, :] >= T - LENGTHS[:, None]
  np.testing.assert_allclose(alpha.sum(-1), (LENGTHS > 0).astype(float), atol=1e-5)
  assert (alpha[~valid] == 0).all()
  changed = _batch(2)
  _change_item(changed, -1)                                      # a valid slot does matter
  assert np.abs(np.asarray(forward(variables, changed)["logit"] - clean["logit"]))[LENGTHS > 0].min() > 0


def test_match_loss_counts_rows_with_two_behaviours_and_trains_every_parameter():
  model = _model()
  variables = _variables(model, _batch(), train=False)

  @jax.jit
  def loss_and_grads(params, batch):
    def total(p):
      out = model.apply({"params": p}, batch, train=True, rngs=RNGS)
      return jax.numpy.sum(out["logit"]) + out["aux_loss"], out["aux_loss"]
    (_, aux), grads = jax.value_and_grad(total, has_aux=True)(params)
    return aux, grads
  loss, grads = loss_and_grads(variables["params"], _batch(3))
  assert np.isfinite(loss) and loss > 0
  dead = [jax.tree_util.keystr(path) for path, g in jax.tree_util.tree_leaves_with_path(grads)
          if np.abs(np.asarray(g)).max() < 1e-7]
  # The u2i scores only enter a softmax, which cancels their output bias (the i2i scores also enter
  # r̂ unnormalised, so theirs learns).
  assert dead == ["['u2i_attention']['Dense_1']['bias']"], dead
  short, _ = loss_and_grads(variables["params"], _batch(3, lengths=np.minimum(LENGTHS, 1)))
  assert short == 0.0
  assert "aux_loss" not in _model(aux_loss_weight=0.0).apply(variables, _batch(3), train=True, rngs=RNGS)
  assert "aux_loss" not in model.apply(variables, _batch(3))


def test_parameter_tree():
  params = jax.eval_shape(lambda: _model().init(jax.random.PRNGKey(0), _batch()))["params"]
  assert set(params["output"]["embedding"]) == {"item_id", "genre", "hour"}
  chex.assert_shape(params["u2i_position"], (T, 4))
  chex.assert_shape(params["i2i_query"]["kernel"], (3 * D + 4, 3 * D))
  # non-sequence 3, candidate, Σ e_t, e_c ∘ Σ e_t, û (3D each), r, r̂
  chex.assert_shape(params["mlp"]["Dense_0"]["kernel"], (3 * D + 4 * 3 * D + 2, 32))
  params = jax.eval_shape(lambda: _model(use_sum_pooling_features=False).init(
      jax.random.PRNGKey(0), _batch()))["params"]
  chex.assert_shape(params["mlp"]["Dense_0"]["kernel"], (3 * D + 2 * 3 * D + 2, 32))


@pytest.mark.parametrize("config, message", [
    ({"aux_loss_weight": -1.0}, r"model.aux_loss_weight=-1.0 must be >= 0"),
    ({"num_negatives": 0}, r"model.num_negatives=0 >= 1"),
])
def test_bad_config_is_a_clear_error(config, message):
  with pytest.raises(ValueError, match=message):
    _model(**config)


def test_registry_finds_dmr():
  assert "dmr" in available()
