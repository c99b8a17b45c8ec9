"""DMR: Deep Match to Rank (Lyu et al., AAAI'20), as the FESeq paper's baseline (§4.1.2).

Tokens (ctrjax/layers/sequence.py, align_fields): behaviours e_t [B, T, D] (⊕ of the behaviour
fields' embeddings), the candidate e_c [B, D] (⊕ of its fields on the same tables). Position
embeddings by distance to the newest behaviour: p_t (item-to-item) and p'_t (user-to-item), two
tables.
Item-to-Item network (eq. 8-10, as the official code computes them):
  q_t = PReLU(W [e_c ; p_t]),  s_t = MLP([q_t ; e_t ; q_t − e_t ; q_t ∘ e_t]) (one scalar),
  â = masked softmax(s),  û = Σ_t â_t e_t (user interest),  r̂ = Σ_t valid_t s_t (i2i relevance).
User-to-Item network (eq. 1-7):
  q'_t = PReLU(W' p'_t),  s'_t = MLP'([q'_t ; e_t ; q'_t − e_t ; q'_t ∘ e_t]),
  u_t = PReLU(W_u Σ_{j ≤ t} softmax_{j ≤ t, valid}(s'_j) e_j)  (the user after behaviour t),
  r = u_T · v'_c, v' = a second ("output") embedding of the same fields (u2i relevance).
  Auxiliary match loss (training, eq. 7 with negative sampling): u_{T−1} must pick the newest
  behaviour v'_T against num_negatives behaviours v'_n drawn from the batch:
  L_aux = mean over rows with ≥ 2 behaviours of [−log σ(u_{T−1}·v'_T) − Σ_n log σ(−u_{T−1}·v'_n)];
  the loss adds aux_loss_weight · L_aux.
Prediction: z = [non-sequence fields ; e_c ; Σ_t e_t ; e_c ∘ Σ_t e_t ; û ; r ; r̂] -> MLP 512-256-128
PReLU -> one logit.

Decisions (the paper leaves these open, or the official code lvze92/DMR differs; each a field):
  * Attention scores: the official code's DIN-style unit (MLP 80-40 sigmoid over [q ; e ; q − e ;
    q ∘ e], q = PReLU(Dense(position ⊕ candidate))) rather than the paper's additive
    zᵀ tanh(W_c e_c + W_p p_t + W_e e_t + b); attention_hidden / attention_activation choose the
    MLP (FESeq repo's port: 512-256 ReLU).
  * Negatives: the official sampled softmax draws 2,000 items from a learned unigram sampler; here
    num_negatives behaviour slots are drawn uniformly from the batch's valid behaviours (any row;
    'dropout' rng stream), so popularity-proportional like it, and a negative equal to the positive
    (same first-field id) is dropped. aux_loss_weight = 0.1 (official "aux_loss *= 0.1"); 0 = off.
  * Positions count from the newest behaviour (official: the absolute slot of a right-aligned
    50-long history, the same thing there), so left padding does not move them; width position_dim.
  * Σ_t e_t and e_c ∘ Σ_t e_t are in the DNN input (official; use_sum_pooling_features=False drops
    them). The official DNN batch-normalises its input with batch statistics even at evaluation;
    dnn.batch_norm=True uses the MLP's per-layer BatchNorm (FESeq repo's port), the default is none.
  * The numeric behaviour field time_gap_field, if present, is not used.
  * Init: embeddings and position tables truncated normal (init_std), Dense kernels Xavier-normal.
  * The behaviour mask is batch["behavior"]["mask"]; an empty history gives û = 0, r̂ = 0 and
    u_T = PReLU(bias).
Returns {"logit": [B], "attention": {"item_to_item": â [B, T]}, "aux_loss": scalar (training with
aux_loss_weight > 0)}.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ctrjax.data.schema import Schema
from ctrjax.layers.attention import masked_softmax
from ctrjax.layers.embedding import FeatureEmbedding, masked_sum
from ctrjax.layers.mlp import DNN, MLP, XAVIER, PReLU
from ctrjax.layers.sequence import AlignedFields, align_fields, reverse_positions, without_fields


class OutputTokens(nn.Module):
  """The behaviour and candidate tokens from the output embedding v' (DMR's item vectors for the
  user-to-item match; named "embedding" so lazy optimisers treat it as tables)."""
  schema: Schema
  aligned: AlignedFields
  embed_dim: int
  init_std: float

  @nn.compact
  def __call__(self, batch: dict):
    fields = Schema((*self.aligned.behavior, *dict.fromkeys(self.aligned.candidate), self.schema.label))
    emb = FeatureEmbedding(fields, self.embed_dim, nn.initializers.truncated_normal(self.init_std),
                           name="embedding")(batch)
    return self.aligned.tokens(emb)


class Model(nn.Module):
  schema: Schema
  embed_dim: int = 16
  position_dim: int = 8
  attention_hidden: Sequence[int] = (80, 40)
  attention_activation: str = "sigmoid"
  aux_loss_weight: float = 0.1
  num_negatives: int = 5
  use_sum_pooling_features: bool = True
  time_gap_field: str = "hist_time_gap"   # a numeric behaviour field left out of the tokens
  dnn: DNN = DNN((512, 256, 128), "prelu")
  init_std: float = 0.02

  def __post_init__(self):
    super().__post_init__()
    if self.aux_loss_weight < 0 or self.num_negatives < 1:
      raise ValueError(f"model.aux_loss_weight={self.aux_loss_weight!r} must be >= 0 (0 = off) and "
                       f"model.num_negatives={self.num_negatives!r} >= 1")
    key = align_fields(self.schema, (self.time_gap_field,)).behavior[0]
    if self.aux_loss_weight > 0 and key.max_len < 2:
      raise ValueError(f"model.aux_loss_weight={self.aux_loss_weight!r}: the match loss needs histories of "
                       f"at least 2 slots, {key.name!r} has {key.max_len} (set it to 0)")

  @nn.compact
  def __call__(self, batch: dict, train: bool = False) -> dict:
    init = nn.initializers.truncated_normal(self.init_std)
    aligned = align_fields(self.schema, (self.time_gap_field,))
    emb = FeatureEmbedding(without_fields(self.schema, (self.time_gap_field,)), self.embed_dim, init,
                           name="embedding")(batch)
    behaviors, candidate = aligned.tokens(emb)                                     # e_t, e_c
    mask = batch["behavior"]["mask"]
    b, length, width = behaviors.shape
    order = reverse_positions(length)

    def scores(query, name):
      """s_t = MLP([q_t ; e_t ; q_t − e_t ; q_t ∘ e_t]) [B, T]."""
      units = jnp.concatenate([query, behaviors, query - behaviors, query * behaviors], axis=-1)
      scorer = MLP(self.attention_hidden, self.attention_activation, output_dim=1, name=name)
      return scorer(units, train)[..., 0]

    def query(inputs, name):
      return PReLU(name=f"{name}_prelu")(nn.Dense(width, kernel_init=XAVIER, name=name)(inputs))

    # item-to-item
    positions = self.param("i2i_position", init, (length, self.position_dim))[order]
    i2i_query = query(jnp.concatenate([jnp.broadcast_to(candidate[:, None], behaviors.shape),
                                       jnp.broadcast_to(positions, (b, length, self.position_dim))], -1),
                      "i2i_query")
    i2i_scores = scores(i2i_query, "i2i_attention")
    alpha = masked_softmax(i2i_scores, mask)
    interest = jnp.sum(alpha[..., None] * behaviors, axis=1)                       # û
    i2i_relevance = jnp.sum(jnp.where(mask, i2i_scores, 0.0), axis=1)             # r̂
    # user-to-item
    positions = self.param("u2i_position", init, (length, self.position_dim))[order]
    u2i_scores = scores(jnp.broadcast_to(query(positions, "u2i_query"), behaviors.shape), "u2i_attention")
    history = mask[:, None, :] & jnp.tril(jnp.ones((length, length), bool))        # row t: j ≤ t, valid
    weights = masked_softmax(jnp.broadcast_to(u2i_scores[:, None, :], history.shape), history)
    users = PReLU(name="user_prelu")(nn.Dense(width, kernel_init=XAVIER, name="user")(
        jnp.einsum("btj,bjd->btd", weights, behaviors)))                          # u_t [B, T, D]
    output_behaviors, output_candidate = OutputTokens(self.schema, aligned, self.embed_dim, self.init_std,
                                                      name="output")(batch)
    u2i_relevance = jnp.sum(users[:, -1] * output_candidate, axis=-1)             # r
    parts = [*aligned.other_vectors(emb), candidate]
    if self.use_sum_pooling_features:
      pooled = masked_sum(behaviors, mask, axis=1)
      parts += [pooled, candidate * pooled]
    parts += [interest, u2i_relevance[:, None], i2i_relevance[:, None]]
    logit = self.dnn.tower(output_dim=1)(jnp.concatenate(parts, axis=-1), train)
    out = {"logit": logit[:, 0], "attention": {"item_to_item": alpha}}
    if train and self.aux_loss_weight > 0:
      item_ids = jnp.asarray(batch["behavior"][aligned.behavior[0].name])
      out["aux_loss"] = self.aux_loss_weight * self._match_loss(users[:, -2], output_behaviors, item_ids, mask)
    return out

  def _match_loss(self, user, output_behaviors, item_ids, mask):
    """L_aux: u_{T−1} [B, D] against the newest behaviour and num_negatives batch behaviours."""
    flat_mask = mask.reshape(-1)
    valid_slots = jnp.nonzero(flat_mask, size=flat_mask.size, fill_value=0)[0]
    draws = jax.random.randint(self.make_rng("dropout"), (mask.shape[0], self.num_negatives), 0,
                               jnp.maximum(jnp.sum(flat_mask), 1))
    slots = valid_slots[draws]                                                     # [B, K]
    negatives = output_behaviors.reshape(-1, output_behaviors.shape[-1])[slots]    # [B, K, D]
    keep = item_ids.reshape(-1)[slots] != item_ids[:, -1:]
    positive = optax.sigmoid_binary_cross_entropy(jnp.sum(user * output_behaviors[:, -1], -1), 1.0)
    negative = optax.sigmoid_binary_cross_entropy(jnp.einsum("bd,bkd->bk", user, negatives), 0.0)
    per_row = positive + jnp.sum(jnp.where(keep, negative, 0.0), axis=-1)
    rows = mask[:, -2]                                  # left padding: then slot −1 is valid too
    return jnp.sum(jnp.where(rows, per_row, 0.0)) / jnp.maximum(jnp.sum(rows), 1)
