"""SASRec and TiSASRec: invisible padding (content and amount), relative time intervals, the time
input, gradients, switches and config errors."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from ctrjax.data.schema import Schema
from ctrjax.models import available, build_model
from ctrjax.models.tisasrec import relative_intervals
from tests.test_feseq import (EXTRA, LENGTHS, RNG, SCHEMA, D, T, _batch, _change_item, _left_pad,
                              _variables)

CONFIGS = {"sasrec": dict(embed_dim=D, num_heads=4, dnn={"hidden": (32, 16)}),            # token width 3D = 24
           "tisasrec": dict(embed_dim=D, num_heads=2, dnn={"hidden": (32, 16)}, max_time_interval=16)}
POSITION_TABLES = {"sasrec": ("position_embedding",), "tisasrec": ("position_key", "position_value")}


def _model(name, **config):
  return build_model(name, SCHEMA, {**CONFIGS[name], **config})


@functools.cache
def _forward(name):
  """(jitted (variables, batch) -> logits, variables for T + EXTRA slots)."""
  model = _model(name)
  return jax.jit(lambda v, b: model.apply(v, b)["logit"]), _variables(model, _left_pad(_batch(), EXTRA),
                                                                        train=False)


def _for_length(name, variables, slots):
  """The position tables are indexed by the distance to the candidate: a shorter history uses
  their first slots + 1 rows."""
  params = dict(variables["params"])
  for table in POSITION_TABLES[name]:
    params[table] = params[table][:slots + 1]
  return {**variables, "params": params}


class SasrecTest(chex.TestCase, parameterized.TestCase):

  @parameterized.parameters("sasrec", "tisasrec")
  def test_padding_content_and_amount_are_invisible(self, name):
    forward, long_variables = _forward(name)
    variables = _for_length(name, long_variables, T)
    clean = forward(variables, _batch(2))
    chex.assert_tree_all_finite(clean)
    chex.assert_trees_all_close(forward(variables, _batch(2, noisy_padding=True)), clean, atol=1e-5, rtol=0)
    chex.assert_trees_all_close(forward(long_variables, _left_pad(_batch(2), EXTRA)), clean, atol=1e-5, rtol=0)
    changed = _batch(2)
    _change_item(changed, -1)                                    # a valid slot does matter
    assert np.abs(np.asarray(forward(variables, changed) - clean))[LENGTHS > 0].min() > 0
    if name == "tisasrec":                                       # and so does its time
      timed = _batch(2)
      gaps = np.arange(T, 0, -1) * 10.0 * timed["behavior"]["mask"]
      timed["behavior"]["hist_time_gap"] = gaps.astype(np.float32)
      later = _batch(2)
      later["behavior"]["hist_time_gap"] = timed["behavior"]["hist_time_gap"].copy()
      later["behavior"]["hist_time_gap"][:, -2] -= 5.0           # intervals in units of 5, not 10
      moved = np.abs(np.asarray(forward(variables, later) - forward(variables, timed)))
      assert moved[LENGTHS > 1].min() > 0 and moved[LENGTHS <= 1].max() == 0.0

  def test_relative_intervals_use_the_rows_smallest_gap_and_clip(self):
    gap = jnp.array([[99.0, 30.0, 12.0, 10.0, 0.0],               # slot 0 is padding
                     [7.0, 7.0, 7.0, 7.0, 0.0]])
    valid = jnp.array([[False, True, True, True, True], [False, False, False, False, True]])
    r = np.asarray(relative_intervals(gap, valid, max_interval=10))
    np.testing.assert_array_equal(r[0, 1:, 1:], [[0, 9, 10, 10], [9, 0, 1, 6], [10, 1, 0, 5], [10, 6, 5, 0]])
    np.testing.assert_array_equal(r[1, -1, -1], 0)                 # no positive interval: unit 1
    np.testing.assert_array_equal(r[1, 0, -1], 7)

  def test_every_tisasrec_parameter_gets_a_gradient_and_dropout_acts_only_in_training(self):
    model = _model("tisasrec", dropout=0.3, attention_dropout=0.3, dnn={"hidden": (32, 16), "dropout": 0.3})
    variables, batch = _variables(model, _batch(), train=False), _batch(3)
    rngs = {"dropout": RNG}

    @jax.jit
    def logits_and_grads(params):
      def train_logits(p):
        logits = model.apply({"params": p}, batch, train=True, rngs=rngs)["logit"]
        return logits.sum(), logits
      (_, train), grads = jax.value_and_grad(train_logits, has_aux=True)(params)
      return train, model.apply({"params": params}, batch)["logit"], grads
    train, evaluation, grads = logits_and_grads(variables["params"])
    dead = [jax.tree_util.keystr(path) for path, g in jax.tree_util.tree_leaves_with_path(grads)
            if np.abs(np.asarray(g)).max() < 1e-5]
    # A key bias shifts every score of a query alike, so the softmax cancels it.
    assert dead == ["['block_0']['attention']['key']['bias']"], dead
    chex.assert_tree_all_finite(train)
    assert np.abs(np.asarray(train - evaluation)).min() > 0

  def test_parameter_tree_follows_the_switches(self):
    def shapes(name, **config):
      return jax.eval_shape(lambda: _model(name, **config).init(jax.random.PRNGKey(0), _batch()))["params"]
    params = shapes("sasrec")
    chex.assert_shape(params["position_embedding"], (T + 1, 3 * D))
    chex.assert_shape(params["block_1"]["ffn_hidden"]["kernel"], (3 * D, 3 * D))
    # non-sequence fields user_id, item_year, price, then the candidate's output
    chex.assert_shape(params["mlp"]["Dense_0"]["kernel"], (3 * D + 3 * D, 32))
    params = shapes("sasrec", norm="pre_ln", num_layers=1, pooling="concat")
    assert "final_ln" in params and "block_1" not in params
    chex.assert_shape(params["mlp"]["Dense_0"]["kernel"], (3 * D + (T + 1) * 3 * D, 32))
    params = shapes("tisasrec")
    chex.assert_shape(params["interval_key"], (17, 3 * D))
    chex.assert_shape(params["position_value"], (T + 1, 3 * D))
    assert "position_embedding" not in params

  @parameterized.parameters(
      ("sasrec", {"num_heads": 5}, r"SASRec token width 24 \(behaviour fields x model.embed_dim\) is not "
                                   r"divisible by model.num_heads=5"),
      ("sasrec", {"pooling": "attention"}, "model.pooling='attention'; choose from"),
      ("tisasrec", {"norm": "rms"}, "model.norm='rms'; choose from"),
      ("tisasrec", {"max_time_interval": 0}, "model.max_time_interval=0"),
      ("tisasrec", {"time_gap_field": "gap"}, "TiSASRec needs the numeric behaviour field "
                                              "model.time_gap_field='gap'"),
  )
  def test_bad_config_is_a_clear_error(self, name, config, message):
    with pytest.raises(ValueError, match=message):
      _model(name, **config)

  def test_sasrec_runs_without_time_gaps(self):
    basic = Schema(tuple(f for f in SCHEMA.fields if f.name != "hist_time_gap"))
    build_model("sasrec", basic, CONFIGS["sasrec"])
    with pytest.raises(ValueError, match="needs the numeric behaviour field"):
      build_model("tisasrec", basic, CONFIGS["tisasrec"])


def test_registry_finds_sasrec_and_tisasrec():
  assert {"sasrec", "tisasrec"} <= set(available())
