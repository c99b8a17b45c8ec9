"""FESeq and its sequence layers: causality, reverse positions, invisible padding, bilinear = scaled-dot
pooling at initialisation, time-interval clipping, outputs, gradients, switches, config errors, and the
MovieLens 'feseq' behaviour fields."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from configs import ablation_feseq
from configs import dmr as dmr_config
from configs import feseq as feseq_config
from configs import sasrec as sasrec_config
from configs import tisasrec as tisasrec_config
from ctrjax.data.dataset import Dataset
from ctrjax.data.schema import Field, Schema
from ctrjax.layers.sequence import TargetAttentionPool, align_fields, reverse_positions, time_buckets
from ctrjax.layers.transformer import attention_mask
from ctrjax.models import available, build_model
from data_prep import movielens
from experiments.grid import with_overrides
from tests.test_dien import _variables

T, G, B, D = 6, 3, 8, 8
LENGTHS = np.array([0, T, 1, 3, T, 2, 5, 4])        # row 0 has no history, rows 1 and 4 are full
EXTRA = 3                                            # extra left padding
SCHEMA = Schema((
    Field("item_id", "item", "categorical", vocab_size=30),
    Field("item_genres", "item", "categorical", shape=(G,), vocab_size=7, table="genre"),
    Field("item_year", "item", "categorical", vocab_size=9),
    Field("hist_item_id", "behavior", "sequence", shape=(T,), max_len=T, vocab_size=30, table="item_id"),
    Field("hist_genres", "behavior", "sequence", shape=(T, G), max_len=T, vocab_size=7, table="genre"),
    Field("hist_hour", "behavior", "sequence", shape=(T,), max_len=T, vocab_size=25, table="hour"),
    Field("hist_time_gap", "behavior", "numeric", dtype="float32", shape=(T,)),
    Field("user_id", "user", "categorical", vocab_size=11),
    Field("hour", "context", "categorical", vocab_size=25),
    Field("price", "context", "numeric", dtype="float32"),
    Field("label", "label", "numeric", dtype="float32"),
))
# token fields: 3 sequence (item, genres, hour) + 3 non-sequence (user, year, price) + position + time
SMALL = dict(embed_dim=D, num_heads=4, dnn={"hidden": (32, 16)}, pooling_dim=16, din_hidden=(16,))
WIDTH = 8 * D


# rbg keys: XLA compiles dropout's threefry bits several times slower on CPU.
RNG = jax.random.key(0, impl="rbg")


def _batch(seed=0, lengths=LENGTHS, noisy_padding=False, slots=T):
  """Left-padded histories of the given lengths over ``slots`` slots, newest behaviour last, time
  gaps decreasing towards it; with ``noisy_padding`` the padded slots hold arbitrary ids and gaps."""
  rng = np.random.default_rng(seed)
  mask = np.arange(slots)[None, :] >= slots - np.asarray(lengths)[:, None]
  behavior = {"hist_item_id": rng.integers(2, 30, (B, slots)),
              "hist_genres": rng.integers(1, 7, (B, slots, G)),
              "hist_hour": rng.integers(2, 25, (B, slots)),
              "hist_time_gap": np.sort(rng.random((B, slots)) * 6000, axis=1)[:, ::-1]}
  for name, x in behavior.items():
    if not noisy_padding:
      x = x * (mask if x.ndim == 2 else mask[..., None])
    behavior[name] = x.astype(np.float32 if name == "hist_time_gap" else np.int32)
  return {
      "item": {"item_id": rng.integers(2, 30, B).astype(np.int32),
               "item_genres": rng.integers(0, 7, (B, G)).astype(np.int32),
               "item_year": rng.integers(2, 9, B).astype(np.int32)},
      "behavior": {**behavior, "mask": mask},
      "user": {"user_id": rng.integers(2, 11, B).astype(np.int32)},
      "context": {"hour": rng.integers(2, 25, B).astype(np.int32), "price": rng.random(B).astype(np.float32)},
      "label": rng.integers(0, 2, B).astype(np.float32),
  }


def _left_pad(batch, extra, seed=1):
  """The same behaviours behind ``extra`` more padded slots of random content."""
  rng = np.random.default_rng(seed)
  behavior = {}
  for name, x in batch["behavior"].items():
    noise = (np.zeros((B, extra), bool) if name == "mask"
             else rng.integers(1, 7, (B, extra, *x.shape[2:])).astype(x.dtype))
    behavior[name] = np.concatenate([noise, x], axis=1)
  return {**batch, "behavior": behavior}


def _change_item(batch, slot):
  """Replaces the item id at ``slot`` of every row by another one."""
  ids = batch["behavior"]["hist_item_id"]
  ids[:, slot] = np.where(ids[:, slot] == 29, 28, 29)


def _model(**config):
  return build_model("feseq", SCHEMA, {**SMALL, **config})


@functools.cache
def _forward(**config):
  """(jitted (variables, batch) -> (outputs, intermediates), variables for T + EXTRA slots)."""
  model = _model(**config)
  apply = jax.jit(lambda v, b: model.apply(v, b, mutable=["intermediates"]))
  return apply, _variables(model, _left_pad(_batch(), EXTRA), train=False)


def _for_length(variables, slots):
  """The variables for ``slots`` behaviour slots: the position table is indexed by the distance to
  the target, so a shorter history uses its first slots + 1 rows."""
  params = dict(variables["params"])
  params["position_embedding"] = params["position_embedding"][:slots + 1]
  return {**variables, "params": params}


def _refiner(state, key):
  return np.asarray(state["intermediates"][key][0])


class SequenceLayersTest(parameterized.TestCase):

  def test_attention_mask_hides_padding_and_the_future(self):
    valid = np.array([[False, True, True], [False, False, True]])
    diagonal = np.eye(3, dtype=bool)
    free = np.asarray(attention_mask(valid, causal=False))[:, 0]
    np.testing.assert_array_equal(free, valid[:, None, :] | diagonal)
    causal = np.asarray(attention_mask(valid, causal=True))[:, 0]
    np.testing.assert_array_equal(causal, (valid[:, None, :] | diagonal) & np.tril(np.ones((3, 3), bool)))
    assert causal.any(-1).all()                      # every row, padded queries too, sees itself

  def test_reverse_positions_give_the_last_slot_zero(self):
    for length in (1, 4, 11):
      np.testing.assert_array_equal(reverse_positions(length), np.arange(length)[::-1])

  def test_time_buckets_clip_at_both_bounds(self):
    gap = jnp.array([-5.0, 0.0, 0.5, 1.0, 3999.9, 4000.0, 4000.5, 1e9])
    np.testing.assert_array_equal(time_buckets(gap, 4001), [0, 0, 0, 1, 3999, 4000, 4000, 4000])
    np.testing.assert_array_equal(time_buckets(gap, 5, width=1000.0), [0, 0, 0, 0, 3, 4, 4, 4])
    np.testing.assert_array_equal(time_buckets(jnp.array([0.0, 1.0, 3.0, 1e9]), 10, log_base=2.0),
                                  [0, 1, 2, 9])

  def test_bilinear_pooling_with_identity_equals_scaled_dot_pooling_at_init(self):
    rng = np.random.default_rng(0)
    query, tokens = rng.normal(size=(B, 12)), rng.normal(size=(B, T + 1, 20))
    valid = np.arange(T + 1)[None, :] >= T - LENGTHS[:, None]
    bilinear = TargetAttentionPool("bilinear", hidden_dim=16)
    params = bilinear.init(jax.random.PRNGKey(0), query, tokens, valid, False)["params"]
    np.testing.assert_array_equal(params["bilinear"], np.eye(16))
    dot_params = {k: v for k, v in params.items() if k != "bilinear"}
    pooled, alpha = bilinear.apply({"params": params}, query, tokens, valid, False)
    dot_pooled, dot_alpha = TargetAttentionPool("dot", hidden_dim=16).apply(
        {"params": dot_params}, query, tokens, valid, False)
    chex.assert_trees_all_close((pooled, alpha), (dot_pooled, dot_alpha), atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.asarray(alpha).sum(-1), 1.0, atol=1e-6)
    assert (np.asarray(alpha)[~valid] == 0).all()


class FeseqTest(chex.TestCase, parameterized.TestCase):

  @parameterized.parameters(True, False)
  def test_causal_mask_keeps_changes_at_later_positions(self, causal):
    forward, long_variables = _forward(causal=causal)
    variables = _for_length(long_variables, T)
    j, row = 2, 1                                     # row 1 has a full history
    _, state = forward(variables, _batch(2))
    changed = _batch(2)
    _change_item(changed, j)
    _, changed_state = forward(variables, changed)
    delta = np.abs(_refiner(changed_state, "refiner_output") - _refiner(state, "refiner_output"))[row].max(-1)
    if causal:
      assert delta[:j].max() == 0.0, delta
      assert delta[j:].min() > 0.0, delta
    else:
      assert delta.min() > 0.0, delta
    inputs = np.abs(_refiner(changed_state, "refiner_input") - _refiner(state, "refiner_input"))[row].max(-1)
    assert inputs[j] > 0 and np.delete(inputs, j).max() == 0.0   # the interaction is per position

  def test_target_always_gets_position_zero_and_time_zero(self):
    forward, long_variables = _forward(causal=True)
    params = long_variables["params"]
    for slots, batch in ((T, _batch(3)), (T + EXTRA, _left_pad(_batch(3), EXTRA))):
      _, state = forward(_for_length(long_variables, slots), batch)
      x = _refiner(state, "refiner_input")
      position, time = x[..., -2 * D:-D], x[..., -D:]
      np.testing.assert_array_equal(position[:, -1], np.broadcast_to(params["position_embedding"][0], (B, D)))
      np.testing.assert_array_equal(position[:, -2], np.broadcast_to(params["position_embedding"][1], (B, D)))
      np.testing.assert_array_equal(time[:, -1], np.broadcast_to(params["time_embedding"][0], (B, D)))

  @parameterized.parameters(("attention", True), ("attention", False), ("target", True))
  def test_padding_content_and_amount_are_invisible(self, pooling, causal):
    forward, long_variables = _forward(pooling=pooling, causal=causal)
    variables = _for_length(long_variables, T)
    clean, _ = forward(variables, _batch(4))
    noisy, _ = forward(variables, _batch(4, noisy_padding=True))
    chex.assert_trees_all_close(noisy, clean, atol=1e-5, rtol=0)
    if causal and pooling == "attention":     # the amount once: positions and masks ignore the switches
      longer, _ = forward(long_variables, _left_pad(_batch(4), EXTRA))
      chex.assert_trees_all_close(longer["logit"], clean["logit"], atol=1e-5, rtol=0)
    changed = _batch(4)
    _change_item(changed, -1)                                      # a valid slot does matter
    delta = forward(variables, changed)[0]["logit"] - clean["logit"]
    assert np.abs(np.asarray(delta))[LENGTHS > 0].min() > 0

  def test_time_gaps_beyond_the_last_bucket_are_clipped(self):
    forward, long_variables = _forward(causal=True)
    variables = _for_length(long_variables, T)

    def logit_at(gap):
      batch = _batch(5)
      batch["behavior"]["hist_time_gap"][:, -1] = gap
      return np.asarray(forward(variables, batch)[0]["logit"])[LENGTHS > 0]
    np.testing.assert_array_equal(logit_at(1e7), logit_at(4000.0))
    assert np.abs(logit_at(3999.0) - logit_at(4000.0)).min() > 0

  def test_outputs_and_attention_weights(self):
    forward, long_variables = _forward(causal=True)
    model = _model()
    out, _ = forward(_for_length(long_variables, T), _batch(6))
    chex.assert_shape(out["logit"], (B,))
    chex.assert_tree_all_finite(out)
    fields = model.interaction_fields()
    assert fields == ["hist_item_id", "hist_genres", "hist_hour", "user_id", "item_year", "price"]
    chex.assert_shape(out["attention"]["interaction"], (B, len(fields), len(fields)))
    np.testing.assert_allclose(np.asarray(out["attention"]["interaction"]).sum(-1), 1.0, atol=1e-5)
    pooling = np.asarray(out["attention"]["pooling"])
    valid = np.arange(T + 1)[None, :] >= T - LENGTHS[:, None]
    np.testing.assert_allclose(pooling.sum(-1), 1.0, atol=1e-5)
    assert (pooling[~valid] == 0).all() and pooling[0, -1] == pytest.approx(1.0)   # empty history

  def test_every_parameter_gets_a_gradient_and_dropout_acts_only_in_training(self):
    model = _model(interaction_layers=1, target_interaction_layers=1, interaction_dropout=0.5,
                   attention_dropout=0.5, dropout=0.5, dnn={"hidden": (32, 16), "dropout": 0.5})
    variables, batch = _variables(model, _batch(), train=False), _batch(7)
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
    # A key bias shifts every score of a query alike, so the softmax cancels it (up to rounding:
    # ~1e-7 of the kernels' gradients).
    assert dead == ["['refiner_0']['attention']['key']['bias']"], dead
    chex.assert_tree_all_finite(train)
    assert np.abs(np.asarray(train - evaluation)).min() > 0

  def test_parameter_tree_follows_the_switches(self):
    shapes = lambda **config: jax.eval_shape(
        lambda: _model(**config).init(jax.random.PRNGKey(0), _batch(), train=False))["params"]
    params = shapes()
    chex.assert_shape(params["position_embedding"], (T + 1, D))
    chex.assert_shape(params["time_embedding"], (4001, D))
    chex.assert_shape(params["refiner_0"]["ffn_hidden"]["kernel"], (WIDTH, WIDTH))
    chex.assert_shape(params["pooling"]["bilinear"], (16, 16))
    chex.assert_shape(params["pooling"]["query"]["kernel"], (3 * D, 16))          # item fields
    assert set(params["target_item"]["embedding"]) == {"item_id", "genre", "item_year"}
    chex.assert_shape(params["mlp"]["Dense_0"]["kernel"], (3 * D + WIDTH, 32))   # non-sequence + pooled
    assert "interaction_1" in params and "interaction_1" in params["target_item"]
    params = shapes(use_position=False, use_time=False, pooling="mean", interaction_layers=0,
                    num_heads=2, refiner_norm="post_ln")
    absent = {"position_embedding", "time_embedding", "interaction_0", "target_item", "pooling"}
    assert not absent & set(params)
    chex.assert_shape(params["refiner_0"]["ffn_hidden"]["kernel"], (6 * D, 6 * D))
    assert "ln_ffn" in params["refiner_0"]
    params = shapes(pooling_score="din", target_interaction_layers=0, time_log_base=2.0,
                    interact_non_sequence=False)
    assert "bilinear" not in params["pooling"] and "din" in params["pooling"]
    assert "interaction_0" not in params["target_item"]

  def test_without_non_sequence_fields_the_interaction_sees_sequence_fields_only(self):
    model = _model(interact_non_sequence=False)
    assert model.interaction_fields() == ["hist_item_id", "hist_genres", "hist_hour"]
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), _batch())[0])
    chex.assert_shape(out["attention"]["interaction"], (B, 3, 3))

  @parameterized.parameters(
      ({"pooling": "max"}, r"model.pooling='max'; choose from \('attention', 'target', 'mean'\)"),
      ({"pooling_score": "cosine"}, "model.pooling_score='cosine'; choose from"),
      ({"refiner_norm": "rms"}, "model.refiner_norm='rms'"),
      ({"num_heads": 5}, r"FESeq token width 64 .* not divisible by model.num_heads=5"),
      ({"interaction_heads": 3}, r"model.interaction_heads=3 does not divide model.embed_dim=8"),
      ({"time_gap_field": "gap"}, r"model.use_time=True needs the numeric behaviour field "
                                  r"model.time_gap_field='gap'"),
      ({"time_log_base": 1.0}, r"model.time_log_base=1.0: 0 \(linear\) or > 1"),
      ({"interaction_layers": -1}, "model.interaction_layers=-1"),
  )
  def test_bad_config_is_a_clear_error(self, config, message):
    with pytest.raises(ValueError, match=message):
      _model(**config)

  def test_time_gap_field_can_be_switched_off(self):
    basic = Schema(tuple(f for f in SCHEMA.fields if f.name != "hist_time_gap"))
    build_model("feseq", basic, {**SMALL, "use_time": False})
    with pytest.raises(ValueError, match="model.time_gap_field='hist_time_gap'"):
      build_model("feseq", basic, SMALL)


@pytest.fixture(scope="module")
def movielens_preps(tmp_path_factory):
  """ml-latest-small prepared with the basic and the feseq behaviour fields (5 behaviours)."""
  root = tmp_path_factory.mktemp("prep")
  return (Dataset(movielens.prepare("ml-latest-small", root, max_len=5)),
          Dataset(movielens.prepare("ml-latest-small", root, max_len=5, sequence_fields="feseq")))


def test_movielens_feseq_fields_align_with_the_basic_prep(movielens_preps, tmp_path):
  basic, feseq = movielens_preps                         # Dataset validates dtypes, shapes, id ranges
  assert feseq.path.name == "ml-latest-small-din-len5-feseq"
  assert basic.path.name == "ml-latest-small-din-len5"
  assert "sequence_fields" not in basic.stats["prep"]["args"]    # caches of older preps stay valid
  assert [f.name for f in feseq.schema.group("behavior")] == [
      "hist_item_id", "hist_genres", "hist_hour", "hist_weekday", "hist_time_gap"]
  for split in ("train", "test"):
    cols = {name: np.asarray(c) for name, c in feseq.columns[split].items()}
    for name, column in basic.columns[split].items():
      np.testing.assert_array_equal(cols[name], np.asarray(column), err_msg=name)
    valid = cols["hist_item_id"] != 0
    stamps = cols["hist_timestamp"]
    np.testing.assert_array_equal(cols["hist_hour"], np.where(valid, stamps // 3600 % 24 + 2, 0))
    np.testing.assert_array_equal(cols["hist_weekday"], np.where(valid, (stamps // 86400 + 3) % 7 + 2, 0))
    expected_gap = np.where(valid, (cols["timestamp"][:, None] - stamps) / 60.0, 0.0)
    np.testing.assert_allclose(cols["hist_time_gap"], expected_gap, rtol=1e-6)
    assert (cols["hist_time_gap"][valid] > 0).all()
    np.testing.assert_array_equal(cols["hour"], cols["timestamp"] // 3600 % 24 + 2)
  aligned = align_fields(feseq.schema, ("hist_time_gap",))
  assert [f.name for f in aligned.candidate] == ["item_id", "item_genres", "hour", "weekday"]
  assert [f.name for f in aligned.others] == ["user_id", "item_year", "month"]
  with pytest.raises(ValueError, match="sequence_fields 'all' not in"):
    movielens.prepare("ml-latest-small", tmp_path, sequence_fields="all")


def test_configs_and_grid_variants_build_their_models_on_movielens(movielens_preps):
  schema = movielens_preps[1].schema
  for module in (feseq_config, sasrec_config, tisasrec_config, dmr_config):
    c = module.get_config("quick")
    assert (c.dataset.sequence_fields, c.dataset.max_len, c.num_epochs) == ("feseq", 10, 2)
    model = build_model(c.model_name, schema, c.model)
    batch = jax.tree_util.tree_map(np.asarray, _movielens_batch(movielens_preps[1]))
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), batch)[0])
    chex.assert_shape(out["logit"], (4,))
  base = ablation_feseq.get_config("quick")
  assert ablation_feseq.get_grid("quick").reference == "causal"
  assert {"causal", "non_causal"} <= set(ablation_feseq.VARIANTS)
  for name, overrides in ablation_feseq.VARIANTS.items():
    c = with_overrides(base, overrides, seed=0)
    build_model(c.model_name, schema, c.model)                     # validates every switch


def _movielens_batch(dataset):
  from ctrjax.data import loader
  return loader.gather(dataset, "train", np.arange(4), np.ones(4, np.float32))


def test_registry_finds_feseq():
  assert "feseq" in available()
