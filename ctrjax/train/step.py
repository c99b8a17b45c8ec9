"""TrainState, optimizer, and the pure jitted steps ``(state, batch, rng) -> (state, metrics)``."""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from ctrjax.data.packing import BatchLayout
from ctrjax.errors import ConfigError
from ctrjax.train import mesh as mesh_lib
from ctrjax.train.lazy import LazyEmbeddings, embedding_optimizer
from ctrjax.train.regularizers import EmbeddingRegularizer


class TrainState(train_state.TrainState):
  batch_stats: Any = None
  row_weights: Any = None        # per-table embedding-row weights of the regulariser (data, not constants)
  embedding_opt_state: Any = None  # lazy optimiser state of the embedding tables (None: dense)


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam (optionally clipped by global norm); the learning rate lives in the optimizer state
  (inject_hyperparams) so decay-on-plateau can change it and checkpoints keep it. With lazy
  embeddings it only sees the dense parameters, and the lazy step clips all gradients jointly."""
  if cfg.name != "adam":
    raise ConfigError(f"config.optimizer.name={cfg.name!r}; supported: 'adam'")

  def build(learning_rate):
    adam = optax.adam(learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    if cfg.grad_clip_norm > 0 and embedding_optimizer(cfg) == "dense":
      return optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), adam)
    return adam

  return optax.inject_hyperparams(build)(learning_rate=cfg.learning_rate)


def learning_rate(state: TrainState) -> float:
  return float(state.opt_state.hyperparams["learning_rate"])


def with_learning_rate(state: TrainState, lr) -> TrainState:
  """``state`` with learning rate ``lr`` (a float, or one per seed for seeds.py's stacked state)."""
  old = state.opt_state.hyperparams["learning_rate"]
  new = jax.device_put(jnp.asarray(lr, old.dtype), old.sharding)
  return state.replace(opt_state=state.opt_state._replace(
      hyperparams={**state.opt_state.hyperparams, "learning_rate": new}))


def create_train_state(model: nn.Module, tx, sample_batch: dict, rng: jax.Array, mesh,
                       regularizer: EmbeddingRegularizer,
                       embeddings: LazyEmbeddings | None = None,
                       sharding: mesh_lib.StateSharding | None = None) -> TrainState:
  """Initialises parameters inside jit, directly laid out over the mesh by ``sharding`` (default:
  replicated). With lazy ``embeddings`` the tables get their lazy state instead of optax's."""
  def init(rng):
    params_rng, dropout_rng = jax.random.split(rng)
    variables = model.init({"params": params_rng, "dropout": dropout_rng}, sample_batch, train=False)
    params = variables["params"]
    dense, tables = (params, {}) if embeddings is None else embeddings.split(params)
    return TrainState(step=0, apply_fn=model.apply, params=params, tx=tx, opt_state=tx.init(dense),
                      batch_stats=variables.get("batch_stats", {}),
                      row_weights=regularizer.row_weights(),
                      embedding_opt_state=None if embeddings is None else embeddings.init(tables))
  sharding = sharding or mesh_lib.StateSharding(mesh)
  state = jax.jit(init, out_shardings=sharding.of(jax.eval_shape(init, rng)))(rng)
  return state.replace(step=jax.device_put(jnp.asarray(state.step, jnp.int32), mesh_lib.replicated(mesh)))


def weighted_bce(logit: jax.Array, label: jax.Array, weight: jax.Array) -> jax.Array:
  """Mean binary cross-entropy over rows with weight > 0 (the padding of a last batch has 0)."""
  per_row = optax.sigmoid_binary_cross_entropy(logit, label)
  return jnp.sum(per_row * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def model_variables(state: TrainState, params) -> dict:
  """The variables ``state.apply_fn`` takes: ``params`` and, if the model has any, its batch stats."""
  return {"params": params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}


def _objective(out: dict, batch: dict, penalty: jax.Array, updates) -> tuple[jax.Array, tuple]:
  """BCE plus the embedding penalty plus the model's optional ``aux_loss`` output (DIEN's
  auxiliary loss); the parts and the model's mutable ``updates`` ride along."""
  bce = weighted_bce(out["logit"], batch["label"], batch["weight"])
  aux = out.get("aux_loss", jnp.zeros(()))
  return bce + penalty + aux, (bce, penalty, aux, updates)


def _metrics(bce, penalty, aux, grads) -> dict:
  return {"loss": bce, "penalty": penalty, "aux_loss": aux, "grad_norm": optax.tree.norm(grads)}


def train_step(state: TrainState, batch: dict, rng: jax.Array,
               regularizer: EmbeddingRegularizer | None = None) -> tuple[TrainState, dict]:
  """One optimisation step on a global batch (loss: ``_objective``), optax over every parameter.
  Dropout keys fold in the step, so they are a function of (seed, step) alone (exact resume, any
  device count)."""
  rng = jax.random.fold_in(rng, state.step)

  def loss_fn(params):
    out, updates = state.apply_fn(model_variables(state, params), batch, train=True,
                                  rngs={"dropout": rng}, mutable=["batch_stats"])
    penalty = (regularizer.penalty(params["embedding"], batch, state.row_weights)
               if regularizer is not None else jnp.zeros(()))
    return _objective(out, batch, penalty, updates)

  (_, (bce, penalty, aux, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats))
  return state, _metrics(bce, penalty, aux, grads)


def lazy_train_step(state: TrainState, batch: dict, rng: jax.Array,
                    regularizer: EmbeddingRegularizer | None,
                    embeddings: LazyEmbeddings) -> tuple[TrainState, dict]:
  """``train_step`` with the embedding tables updated row-sparsely by ``embeddings`` (see
  ctrjax/train/lazy.py): the gradient exists only for the rows the batch uses, the dense
  parameters go through optax at the same learning rate. Same loss, metrics and dropout keys."""
  rng = jax.random.fold_in(rng, state.step)
  dense, tables = embeddings.split(state.params)
  compact = embeddings.compact(batch)

  def loss_fn(dense, rows):
    out, updates = embeddings.apply(model_variables(state, embeddings.merge(dense, rows)), batch, compact,
                                    train=True, rngs={"dropout": rng}, mutable=["batch_stats"])
    penalty = embeddings.penalty(rows, compact, regularizer, state.row_weights)
    return _objective(out, batch, penalty, updates)

  rows = embeddings.gather(tables, compact)
  (_, (bce, penalty, aux, updates)), grads = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
      dense, rows)
  dense_grads, row_grads = embeddings.clip(grads)
  dense_updates, opt_state = state.tx.update(dense_grads, state.opt_state, dense)
  tables, embedding_opt_state = embeddings.update(
      tables, state.embedding_opt_state, compact, rows, row_grads,
      state.opt_state.hyperparams["learning_rate"])
  state = state.replace(
      step=state.step + 1, params=embeddings.merge(optax.apply_updates(dense, dense_updates), tables),
      opt_state=opt_state, embedding_opt_state=embedding_opt_state,
      batch_stats=updates.get("batch_stats", state.batch_stats))
  return state, _metrics(bce, penalty, aux, grads)


def predict_step(state: TrainState, batch: dict) -> jax.Array:
  out = state.apply_fn(model_variables(state, state.params), batch, train=False)
  return jax.nn.sigmoid(out["logit"])


def packed_train_step(layout: BatchLayout, regularizer: EmbeddingRegularizer,
                      embeddings: LazyEmbeddings | None = None):
  """The unjitted train step on packed batches, (state, packed, rng) -> (state, metrics):
  ``lazy_train_step`` with lazy ``embeddings``, else ``train_step``."""
  step = (functools.partial(train_step, regularizer=regularizer) if embeddings is None else
          functools.partial(lazy_train_step, regularizer=regularizer, embeddings=embeddings))
  return lambda state, packed, rng: step(state, layout.unpack(packed), rng)


def jit_train(fn, mesh, sharding: mesh_lib.StateSharding | None = None):
  """``jax.jit`` of a train call ``(state, ...) -> (state, metrics)`` on ``mesh``: the state
  donated and laid out by ``sharding`` (default: replicated), the metrics replicated."""
  repl = mesh_lib.replicated(mesh)
  sharding = sharding or mesh_lib.StateSharding(mesh)

  def laid_out(state, *args):
    state, metrics = fn(state, *args)
    return sharding.constrain(state), jax.lax.with_sharding_constraint(metrics, repl)
  return jax.jit(laid_out, donate_argnums=0)


def scan_steps(step):
  """``step`` (state, batch, rng) -> (state, metrics) applied to each batch of a sequence in turn,
  as one ``lax.scan``: (state, batches, rng) -> (state, metrics with a leading step axis).
  ``batches`` is a tuple of batches (stacked inside the jitted call) or one stacked tree."""
  def steps(state, batches, rng):
    if isinstance(batches, tuple):
      batches = jax.tree.map(lambda *x: jnp.stack(x), *batches)
    return jax.lax.scan(lambda s, batch: step(s, batch, rng), state, batches)
  return steps


def jit_steps(mesh, layout: BatchLayout, regularizer: EmbeddingRegularizer,
              embeddings: LazyEmbeddings | None = None, sharding: mesh_lib.StateSharding | None = None):
  """The jitted train (state donated, laid out by ``sharding``, default replicated) and predict
  steps on packed batches, metrics and predictions replicated; the train step is
  ``lazy_train_step`` with lazy ``embeddings``."""
  train = jit_train(packed_train_step(layout, regularizer, embeddings), mesh, sharding)
  predict = jax.jit(lambda state, packed: predict_step(state, layout.unpack(packed)),
                    out_shardings=mesh_lib.replicated(mesh))
  return train, predict


def seed_train_step(layout: BatchLayout, regularizer: EmbeddingRegularizer):
  """``packed_train_step`` mapped over a leading seed axis of the state, the packed batch and the
  dropout key (seeds.py), unjitted."""
  return jax.vmap(packed_train_step(layout, regularizer))


def jit_seed_steps(layout: BatchLayout, regularizer: EmbeddingRegularizer):
  """``jit_steps``' train and predict with a leading seed axis (seeds.py): train maps state, packed
  batch and dropout key over it (state donated); predict maps the state over one shared batch."""
  train = jax.jit(seed_train_step(layout, regularizer), donate_argnums=0)
  predict = jax.jit(jax.vmap(lambda state, packed: predict_step(state, layout.unpack(packed)),
                             in_axes=(0, None)))
  return train, predict
