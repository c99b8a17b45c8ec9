"""Lazy row-sparse embedding optimisers: equal to dense optax where dense touches the same rows,
untouched rows and their state bit-identical, padding row fixed, fused penalty, trainer run and
exact resume, config errors."""
import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from configs import base as base_config
from ctrjax.data.schema import Field, Schema
from ctrjax.models import build_model
from ctrjax.train import mesh as mesh_lib
from ctrjax.train import step as step_lib
from ctrjax.train import trainer
from ctrjax.train.lazy import LazyEmbeddings, distinct_with_padding
from ctrjax.train.regularizers import EmbeddingRegularizer
from data_prep import synthetic
from tests.test_trainer import _config, _metrics, _result, _run

B, T, G, D = 8, 3, 2, 4
LR, LAM = 0.05, 0.01
KINDS = ("lazy_adam", "lazy_adagrad", "lazy_sgd")
MOMENTS = ("mu", "nu", "sum_of_squares")
TABLES = ("item_id", "genre", "user_id")


def _schema(v_item: int, v_user: int, v_genre: int = 6) -> Schema:
  return Schema((
      Field("item_id", "item", "categorical", vocab_size=v_item),
      Field("item_genres", "item", "categorical", shape=(G,), vocab_size=v_genre, table="genre"),
      Field("hist_item_id", "behavior", "sequence", shape=(T,), max_len=T, vocab_size=v_item,
            table="item_id"),
      Field("user_id", "user", "categorical", vocab_size=v_user),
      Field("price", "context", "numeric", dtype="float32"),
      Field("label", "label", "numeric", dtype="float32"),
  ))


# Every table no bigger than its id slots + 1 (item 32 slots, genre 16, user 8): the whole-table path.
SMALL = _schema(v_item=20, v_user=9)
# item_id and user_id far bigger than their slots: the unique/gather/scatter path.
BIG = _schema(v_item=1009, v_user=53)   # primes that match no other dimension (HLO test)
SCHEMAS = {"small": SMALL, "big": BIG}
SLOTS = {"item_id": B + B * T, "genre": B * G, "user_id": B}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """test_trainer's synthetic dataset, for its config and run helpers."""
  return synthetic.generate(tmp_path_factory.mktemp("syn") / "ds", num_rows=5000, num_items=300,
                            num_users=100, max_len=8, seed=0)


def _batch(schema: Schema, slots: dict[str, np.ndarray], rng: np.random.Generator) -> dict:
  """A model batch whose fields take, in schema order, each table's ``slots`` ids (0 = padding)."""
  out = {"item": {}, "behavior": {}, "user": {}, "context": {"price": rng.random(B).astype(np.float32)},
         "label": rng.integers(0, 2, B).astype(np.float32), "weight": np.ones(B, np.float32)}
  used = dict.fromkeys(slots, 0)
  for f in schema.fields:
    if f.has_ids:
      n = B * int(np.prod(f.shape))
      ids = slots[f.table][used[f.table]:used[f.table] + n]
      out[f.group][f.name] = ids.reshape(B, *f.shape).astype(np.int32)
      used[f.table] += n
  out["behavior"]["mask"] = out["behavior"]["hist_item_id"] != 0
  return out


def _slots(schema: Schema, rng: np.random.Generator, every_row: bool) -> dict[str, np.ndarray]:
  """Random ids per table (padding included); with ``every_row`` each id 1..V-1 occurs at least once."""
  out = {}
  for t, v in schema.tables.items():
    ids = rng.integers(0, v, SLOTS[t])
    if every_row:
      ids[:v - 1] = np.arange(1, v)
    out[t] = rng.permutation(ids)
  return out


def _optimizer_cfg(kind: str, clip: float = 0.0):
  cfg = base_config.get_config().optimizer
  cfg.learning_rate, cfg.embeddings, cfg.grad_clip_norm = LR, kind, clip
  return cfg


def _model(schema: Schema, name: str = "base_model"):
  config = {"lr": {}, "wide_deep": dict(embed_dim=D, dnn={"hidden": (8,)}, cross_buckets=64)}.get(
      name, dict(embed_dim=D, dnn={"hidden": (8,), "dropout": 0.1}))
  return build_model(name, schema, config)


def _regularizer(schema: Schema, mode: str = "mba") -> EmbeddingRegularizer:
  rng = np.random.default_rng(7)
  counts = {t: rng.integers(0, 5, v) for t, v in schema.tables.items()}
  return EmbeddingRegularizer.build(schema, counts, mode, LAM)


def _dense_reference_tx(kind: str, clip: float) -> optax.GradientTransformation:
  """Dense optax: Adam on every parameter but the embedding tables, ``kind``'s optax on them."""
  cfg = _optimizer_cfg(kind)
  tables = {"lazy_adam": optax.adam(LR, cfg.b1, cfg.b2, cfg.eps), "lazy_adagrad": optax.adagrad(LR),
            "lazy_sgd": optax.sgd(LR)}[kind]

  def labels(params):
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({p: "table" if p[-2:-1] == ("embedding",) and p[-1] in TABLES
                                         else "dense" for p in flat})
  tx = optax.multi_transform({"dense": optax.adam(LR, cfg.b1, cfg.b2, cfg.eps), "table": tables}, labels)
  return optax.chain(optax.clip_by_global_norm(clip), tx) if clip else tx


def _states(schema, model, kind, regularizer, clip=0.0):
  """(lazy state, dense reference state) from the same initial parameters, and their jitted steps."""
  sample = _batch(schema, _slots(schema, np.random.default_rng(0), every_row=False), np.random.default_rng(0))
  mesh, rng = mesh_lib.make_mesh(1), jax.random.PRNGKey(3)
  cfg = _optimizer_cfg(kind, clip)
  embeddings = LazyEmbeddings.build(cfg, model)
  lazy = step_lib.create_train_state(model, step_lib.make_optimizer(cfg), sample, rng, mesh, regularizer,
                                     embeddings)
  dense = step_lib.create_train_state(model, _dense_reference_tx(kind, clip), sample, rng, mesh, regularizer)
  lazy_step = jax.jit(functools.partial(step_lib.lazy_train_step, regularizer=regularizer,
                                        embeddings=embeddings))
  dense_step = jax.jit(functools.partial(step_lib.train_step, regularizer=regularizer))
  return lazy, dense, lazy_step, dense_step


def _tables(state) -> dict:
  """{path: table} of the embedding tables in the params."""
  return {p: np.asarray(v) for p, v in traverse_util.flatten_dict(jax.device_get(state.params)).items()
          if p[-2:-1] == ("embedding",) and p[-1] in TABLES}


def _lazy_moments(state) -> dict:
  """{(table path, name): per-row moment}: mu and nu (Adam), sum_of_squares (Adagrad)."""
  return {(path, name): np.asarray(getattr(s, name))
          for path, s in traverse_util.flatten_dict(jax.device_get(state.embedding_opt_state)).items()
          for name in MOMENTS if hasattr(s, name)}


def _dense_moments(state) -> dict:
  """The same moments from the table part of ``_dense_reference_tx``'s state."""
  chained_after_clip = not hasattr(state.opt_state, "inner_states")
  multi = state.opt_state[-1] if chained_after_clip else state.opt_state
  s = jax.device_get(multi.inner_states["table"].inner_state[0])
  return {(path, name): np.asarray(v) for name in MOMENTS if hasattr(s, name)
          for path, v in traverse_util.flatten_dict(getattr(s, name)).items()
          if not isinstance(v, optax.MaskedNode)}


@pytest.mark.parametrize("kind, model_name, size, clip", [
    ("lazy_adam", "base_model", "small", 0.0),      # small: every row in every step
    ("lazy_adagrad", "base_model", "small", 0.0),
    ("lazy_sgd", "base_model", "small", 0.0),
    ("lazy_adam", "base_model", "big", 0.0),        # big: the same rows in every step
    ("lazy_adagrad", "base_model", "big", 0.0),
    ("lazy_sgd", "base_model", "big", 0.0),
    ("lazy_adam", "base_model", "big", 0.05),       # joint clipping, active
    ("lazy_adam", "wide_deep", "big", 0.0),         # nested tables, raw ids in the hashed cross
    ("lazy_adam", "lr", "big", 0.0),
])
def test_lazy_equals_dense_optax_when_both_touch_the_same_rows(kind, model_name, size, clip):
  """Dense Adam moves a row only once it has had a gradient: with every row touched in every step,
  or the same rows in every step, lazy and dense agree (and Adagrad/SGD always do)."""
  schema, every_row = SCHEMAS[size], size == "small"
  model, regularizer = _model(schema, model_name), _regularizer(schema)
  lazy, dense, lazy_step, dense_step = _states(schema, model, kind, regularizer, clip)
  initial = _tables(lazy)
  rng, fixed = np.random.default_rng(1), _slots(schema, np.random.default_rng(2), every_row)
  for _ in range(4):
    slots = (_slots(schema, rng, every_row=True) if every_row
             else {t: rng.permutation(ids) for t, ids in fixed.items()})
    batch = _batch(schema, slots, rng)
    lazy, m_lazy = lazy_step(lazy, batch, jax.random.PRNGKey(5))
    dense, m_dense = dense_step(dense, batch, jax.random.PRNGKey(5))
    chex.assert_trees_all_close(m_lazy, m_dense, rtol=1e-5, atol=1e-7)
    if clip:
      assert float(m_lazy["grad_norm"]) > clip, "clipping must be active"
  assert int(lazy.step) == int(dense.step) == 4
  chex.assert_trees_all_close(jax.device_get(lazy.params), jax.device_get(dense.params), rtol=1e-5, atol=1e-6)
  moments_lazy, moments_dense = _lazy_moments(lazy), _dense_moments(dense)
  assert sorted(moments_lazy) == sorted(moments_dense)
  assert len(moments_lazy) == {"lazy_adam": 6, "lazy_adagrad": 3, "lazy_sgd": 0}[kind] * (
      2 if model_name == "wide_deep" else 1)
  chex.assert_trees_all_close(moments_lazy, moments_dense, rtol=1e-5, atol=1e-9)
  assert all(np.any(w != initial[p]) for p, w in _tables(lazy).items())   # not vacuous


def test_compiled_lazy_step_writes_big_tables_only_by_row_scatters():
  """Outside its parameters no value of the compiled (donating) lazy step has a big table's size
  but the in-place row scatters (and their fusion wrappers) into the tables and their moments: no
  copy, no dense gradient. The dense step is the control that shows the check can fail."""
  model, regularizer = _model(BIG), _regularizer(BIG)
  lazy, dense, _, _ = _states(BIG, model, "lazy_adam", regularizer)
  embeddings = LazyEmbeddings.build(_optimizer_cfg("lazy_adam"), model)
  lazy_step = jax.jit(functools.partial(step_lib.lazy_train_step, regularizer=regularizer,
                                        embeddings=embeddings), donate_argnums=0)
  dense_step = jax.jit(functools.partial(step_lib.train_step, regularizer=regularizer), donate_argnums=0)
  batch = _batch(BIG, _slots(BIG, np.random.default_rng(0), False), np.random.default_rng(0))
  instr = re.compile(r"^\s*(?:ROOT )?%?([\w.-]+) = (\(.*?\)|\S+) ([\w-]+)\(", re.M)
  rows = {BIG.tables[t] for t in ("item_id", "user_id")}

  def table_sized(step, state):
    hlo = step.lower(state, batch, jax.random.PRNGKey(0)).compile().as_text()
    return [(op, name) for name, shape, op in instr.findall(hlo) if op not in ("parameter", "tuple")
            and rows & {int(d) for dims in re.findall(r"\[([\d,]+)\]", shape) for d in dims.split(",")}]

  lazy_ops = table_sized(lazy_step, lazy)
  assert lazy_ops and all("scatter" in name for _, name in lazy_ops), lazy_ops
  assert any("scatter" not in name for _, name in table_sized(dense_step, dense))


@pytest.mark.parametrize("kind", KINDS)
def test_untouched_rows_and_their_state_stay_bit_identical(kind):
  """After steps on other rows (so that state is non-trivial), a step leaves every row absent from
  its batch, and that row's state, bit for bit as it was; every present row moves."""
  model, regularizer = _model(BIG), _regularizer(BIG)
  state, _, step, _ = _states(BIG, model, kind, regularizer)
  rng = np.random.default_rng(4)
  for _ in range(3):                                 # different rows each step: state on many rows
    state, _ = step(state, _batch(BIG, _slots(BIG, rng, False), rng), jax.random.PRNGKey(0))
  slots = _slots(BIG, rng, False)
  before_tables, before_moments = _tables(state), _lazy_moments(state)
  state, _ = step(state, _batch(BIG, slots, rng), jax.random.PRNGKey(0))
  after_tables, after_moments = _tables(state), _lazy_moments(state)
  for path, table in before_tables.items():
    t = path[-1]
    touched = np.zeros(len(table), bool)
    touched[slots[t]] = True
    touched[0] = False
    untouched = ~touched
    assert untouched.sum() > 1 and touched.sum() > 0, t
    assert np.array_equal(after_tables[path][untouched], table[untouched]), t
    assert np.all(np.any(after_tables[path][touched] != table[touched], axis=1)), t
    for name in MOMENTS:
      if (path, name) in before_moments:
        before, after = before_moments[path, name], after_moments[path, name]
        assert np.array_equal(after[untouched], before[untouched]), (t, name)
        assert np.all(np.any(after[touched] != before[touched], axis=1)), (t, name)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", SCHEMAS)
def test_padding_row_and_its_state_never_move(kind, size):
  """Row 0 is masked out of every lookup and unpenalised; lazy steps never write it."""
  schema = SCHEMAS[size]
  model, regularizer = _model(schema), _regularizer(schema)
  state, _, step, _ = _states(schema, model, kind, regularizer)
  initial_tables, initial_moments = _tables(state), _lazy_moments(state)
  rng = np.random.default_rng(5)
  for _ in range(3):
    slots = _slots(schema, rng, every_row=False)
    slots = {t: np.where(np.arange(len(ids)) % 2 == 0, 0, ids) for t, ids in slots.items()}  # much padding
    state, _ = step(state, _batch(schema, slots, rng), jax.random.PRNGKey(0))
  for path, table in _tables(state).items():
    assert np.array_equal(table[0], initial_tables[path][0]), path
  for key, moment in _lazy_moments(state).items():
    assert np.array_equal(moment[0], initial_moments[key][0]), key


@pytest.mark.parametrize("mode", ["mba", "touched"])
@pytest.mark.parametrize("size", SCHEMAS)
def test_fused_penalty_equals_the_regularizer_on_the_dense_tables(mode, size):
  """The lazy step's penalty (on compact rows) is EmbeddingRegularizer.penalty on the full tables."""
  schema = SCHEMAS[size]
  model, regularizer = _model(schema), _regularizer(schema, mode)
  state, _, step, _ = _states(schema, model, "lazy_adam", regularizer)
  rng = np.random.default_rng(6)
  for _ in range(2):
    batch = _batch(schema, _slots(schema, rng, False), rng)
    expected = jax.jit(regularizer.penalty)(state.params["embedding"], batch, state.row_weights)
    state, metrics = step(state, batch, jax.random.PRNGKey(0))
    assert float(expected) > 0
    np.testing.assert_allclose(metrics["penalty"], expected, rtol=1e-6)


def test_lazy_adam_trains_in_the_trainer_and_the_dense_tables_have_no_optax_state(dataset):
  setup = trainer.Setup(_config(dataset, **{"optimizer.embeddings": "lazy_adam", "regularizer.mode": "mba",
                                            "regularizer.weight": 1e-4}), dataset)
  src = setup.source("train", train=True)
  state = setup.init_state(src[0])
  optax_leaves = {p[-1] for p in traverse_util.flatten_dict(state.opt_state.inner_state[0].mu)}
  assert not optax_leaves & set(setup.dataset.schema.tables)
  assert set(traverse_util.flatten_dict(state.embedding_opt_state)) == {
      ("embedding", t) for t in setup.dataset.schema.tables}
  losses = []
  for i in range(30):
    state, m = setup.train_step(state, setup.to_device(src[i % 10]), setup.rng)
    losses.append(float(m["loss"]))
  assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_kill_minus_9_and_resume_is_exact_with_lazy_embeddings(dataset, tmp_path):
  lazy = ("--config.optimizer.embeddings=lazy_adam", "--config.num_epochs=1")
  _run(dataset, tmp_path / "full", *lazy)
  proc = _run(dataset, tmp_path / "killed", *lazy, "--config.debug.kill_at_step=40", check=False)
  assert proc.returncode == -9, proc.stderr[-2000:]
  proc = _run(dataset, tmp_path / "killed", *lazy)
  assert "resumed from step 25" in proc.stdout
  assert _metrics(tmp_path / "killed") == _metrics(tmp_path / "full")
  assert _result(tmp_path / "killed") == _result(tmp_path / "full")


@pytest.mark.parametrize("overrides, message", [
    ({"optimizer.embeddings": "lazy_adamw"}, "config.optimizer.embeddings='lazy_adamw': expected one of "
                                             "('dense', 'lazy_adam', 'lazy_adagrad', 'lazy_sgd')"),
    ({"optimizer.embeddings": "lazy_sgd", "regularizer.mode": "full_table"},
     "config.regularizer.mode='full_table' penalises every row"),
])
def test_bad_embedding_optimizer_settings_name_the_field(dataset, overrides, message):
  with pytest.raises(ValueError) as e:
    trainer.Setup(_config(dataset, **overrides), dataset)
  assert message in str(e.value)


def test_distinct_with_padding_equals_jnp_unique():
  ids = np.random.default_rng(8).integers(0, 40, 300).astype(np.int32)
  for x in (ids, ids + 1, np.zeros(5, np.int32)):        # with, without and only padding
    u, inverse = jax.jit(distinct_with_padding, static_argnums=1)(x, 1000)
    expected_u, expected_inverse = jnp.unique(np.r_[0, x], size=x.size + 1, fill_value=1000,
                                              return_inverse=True)
    np.testing.assert_array_equal(u, expected_u)
    np.testing.assert_array_equal(inverse, np.ravel(expected_inverse)[1:])
    np.testing.assert_array_equal(np.asarray(u)[inverse], x)
