"""DIEN: Deep Interest Evolution Network (Zhou et al., AAAI'19).

Embedding: behaviour tokens e_t = concat of the behaviour fields' embeddings (item id ⊕ genres)
[B, T, D_b]; the candidate e_a = the same fields of the candidate item (behavior_aligned_item).
Interest extractor (eq. 1-4): h_t = GRU(e_t, h_{t−1}) [B, T, H] (ctrjax/layers/gru.py).
Auxiliary loss (eq. 5-6), training only, added to the loss as aux_loss_alpha · L_aux:
  p(h, e) = σ(MLP_aux([h ; e])),  v_t = m_t·m_{t+1}  (both slots are behaviours)
  L_aux = Σ_{b,t} v_t·[−log p(h_t, e_{t+1}) − k_t·log(1 − p(h_t, e⁻_{t+1}))] / Σ_{b,t} v_t
Interest evolving (eq. 7-8): a_t = masked softmax_t score(e_a, h_t);
  h'_t = AUGRU(h_t, h'_{t−1}, a_t); the evolved interest h'_T is the state after the newest behaviour.
Prediction: z = [user fields ; item fields ; Σ_t m_t e_t ; e_a ∘ Σ_t m_t e_t ; h'_T ; context
  fields] -> MLP (200-80, Dice) -> one logit (the official 2-way softmax is a sigmoid on one logit).

Decisions (the paper leaves these open, or the official code mouna99/dien differs from it; each a
field). Defaults follow the official code, which produced the paper's numbers:
  * gru_units: H = the behaviour token width (official: 36 = item ⊕ category) when None.
  * GRU cell: TF conventions (reset gate before the candidate matmul, gate biases 1.0), see gru.py.
  * gru_type: 'augru' (paper); 'aigru' and 'agru' are the paper's other variants; 'gru' evolves by a
    plain GRU without attention (FuxiCTR) and the output then has no "attention".
  * augru_variant: 'official_tf' (VecAttGRUCell: a_t = 0 is a plain GRU step) or 'paper' (eq. 8:
    ũ_t = a_t·u_t, a_t = 0 keeps the state). With softmax scores ≈ 1/T the paper form moves h' little.
  * attention_type: 'din_fcn' (official din_fcn_attention: q = PReLU(Dense_H(e_a)), MLP 80-40 with
    sigmoid over [q ; h_t ; q − h_t ; q ∘ h_t], masked softmax) or 'bilinear' (the paper's
    a_t ∝ exp(h_t W e_a), W initialised to the identity as in FuxiCTR).
  * Auxiliary net: MLP 100-50 with sigmoid (official; FuxiCTR ReLU: on a toy batch the sigmoid net
    sits on a plateau for ~100 Adam steps, ReLU learns at once) and one output logit with BCE (the
    official 2-way softmax is the same function class); the official input BatchNorm runs in
    inference mode (a fixed affine) and is left out. Its parameters are created at init.
  * Auxiliary mask v_t = m_t·m_{t+1} (official: m_{t+1} only, the same for its right padding),
    normalised by the number of valid pairs (official: by B·(T−1), padding included).
  * Negatives e⁻: no negatives are stored, so each pair draws one valid behaviour slot of the batch
    uniformly (any row, any position; rng stream 'dropout') and takes its whole token. Like the
    official draw from the item of every review record this is popularity-proportional and redrawn
    every step; the pool is the batch, not the training set. Deviation: where the drawn item id
    equals the positive's, the negative term is dropped (k_t = 0) instead of redrawn.
  * aux_loss_alpha = 1 (official). The official CTR loss is BCE/2 (2-way softmax averaged over two
    columns), so there the auxiliary loss weighs twice as much against the CTR loss; 2.0 matches that.
  * Σ_t e_t sums only valid behaviours (official: unmasked, padding embeds a real 'default' id);
    use_sum_pooling_features=False drops it and e_a ∘ Σ e_t (FuxiCTR's default).
  * DNN: no input BatchNorm (official: an inference-mode affine); Dice 'paper' variant (running
    averages at evaluation; the official Dice uses batch statistics at evaluation too).
  * Init: embeddings truncated normal (init_std, the project's convention; official Glorot-uniform),
    Dense kernels Xavier-normal, GRU kernels Glorot-uniform.
  * The behaviour mask is batch["behavior"]["mask"], never recomputed from ids. An empty history
    gives h'_T = 0, a = 0, zero sums and an auxiliary loss of 0.
Returns {"logit": [B], "attention": {"evolution": a [B, T]} (attentional gru_type),
"aux_loss": scalar (training with aux_loss_alpha > 0)}.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ctrjax.data.schema import Schema
from ctrjax.layers.attention import LocalActivationUnit, masked_softmax
from ctrjax.layers.embedding import FeatureEmbedding, behavior_aligned_item, masked_sum
from ctrjax.layers.gru import GRU, check_gru_type
from ctrjax.layers.mlp import DNN, MLP, PReLU

ATTENTION_TYPES = ("din_fcn", "bilinear")


def _identity(key, shape, dtype=jnp.float32):
  del key
  return jnp.eye(*shape, dtype=dtype)


class Model(nn.Module):
  schema: Schema
  embed_dim: int = 16
  gru_units: int | None = None            # None: the behaviour token width
  gru_type: str = "augru"                 # interest evolving: 'gru', 'aigru', 'agru' or 'augru'
  augru_variant: str = "official_tf"      # 'official_tf' (VecAttGRUCell) or 'paper' (eq. 8)
  attention_type: str = "din_fcn"         # 'din_fcn' (official) or 'bilinear' (paper)
  attention_hidden: Sequence[int] = (80, 40)
  attention_activation: str = "sigmoid"
  use_sum_pooling_features: bool = True   # Σ e_t and e_a ∘ Σ e_t in the DNN input (official)
  dnn: DNN = DNN((200, 80), "dice")
  aux_loss_alpha: float = 1.0             # 0 switches the auxiliary loss off
  aux_hidden: Sequence[int] = (100, 50)
  aux_activation: str = "sigmoid"
  init_std: float = 0.02

  def __post_init__(self):
    super().__post_init__()
    check_gru_type(self.gru_type, self.augru_variant, prefix="model.")
    if self.attention_type not in ATTENTION_TYPES:
      raise ValueError(f"model.attention_type={self.attention_type!r}; choose from {ATTENTION_TYPES}")
    if self.aux_loss_alpha < 0:
      raise ValueError(f"model.aux_loss_alpha={self.aux_loss_alpha!r}: expected >= 0 (0 = off)")
    if self.schema.behavior_key is None:
      raise ValueError("DIEN needs a behaviour sequence; the dataset has no behaviour fields")

  @nn.compact
  def __call__(self, batch: dict, train: bool = False) -> dict:
    emb = FeatureEmbedding(self.schema, self.embed_dim, nn.initializers.truncated_normal(self.init_std),
                           name="embedding")(batch)
    mask = batch["behavior"]["mask"]
    behaviors = jnp.concatenate(list(emb["behavior"].values()), axis=-1)        # e_t [B, T, D_b]
    target = behavior_aligned_item(self.schema, emb)                             # e_a [B, D_b]
    units = self.gru_units or behaviors.shape[-1]
    interests, _ = GRU(units, name="interest_extractor")(behaviors, mask)      # h_t [B, T, H]
    out = {}
    if self.gru_type == "gru":
      _, evolved = GRU(units, name="interest_evolving")(interests, mask)
    else:
      alpha = self._attention(target, interests, mask, train)
      _, evolved = GRU(units, self.gru_type, self.augru_variant, name="interest_evolving")(
          interests, mask, alpha)                                                # h'_T [B, H]
      out["attention"] = {"evolution": alpha}
    parts = [*emb["user"].values(), *emb["item"].values()]
    if self.use_sum_pooling_features:
      pooled = masked_sum(behaviors, mask, axis=1)
      parts += [pooled, target * pooled]
    parts += [evolved, *emb["context"].values()]
    logit = self.dnn.tower(output_dim=1)(jnp.concatenate(parts, axis=-1), train)
    out["logit"] = logit[:, 0]
    if self.aux_loss_alpha > 0:
      aux_net = MLP(self.aux_hidden, self.aux_activation, output_dim=1, name="aux_net")
      if train:
        item_ids = jnp.asarray(batch["behavior"][self.schema.behavior_key.name])
        out["aux_loss"] = self.aux_loss_alpha * self._auxiliary_loss(
            aux_net, interests, behaviors, item_ids, mask, train)
      elif self.is_initializing():     # init runs with train=False: create what training uses
        aux_net(jnp.concatenate([interests, behaviors], axis=-1), train)
    return out

  def _attention(self, target, interests, mask, train):
    """a [B, T]: masked softmax over the valid steps of score(e_a, h_t)."""
    if self.attention_type == "din_fcn":
      query = nn.Dense(interests.shape[-1], kernel_init=nn.initializers.xavier_normal(),
                       name="attention_query")(target)
      _, alpha = LocalActivationUnit(self.attention_hidden, self.attention_activation,
                                     weighting="softmax", name="attention")(
          PReLU(name="attention_query_prelu")(query), interests, mask, train)
      return alpha
    kernel = self.param("bilinear_attention", _identity, (interests.shape[-1], target.shape[-1]))
    scores = jnp.sum(interests * (target @ kernel.T)[:, None, :], axis=-1)
    return masked_softmax(scores, mask)

  def _auxiliary_loss(self, aux_net, interests, behaviors, item_ids, mask, train):
    """L_aux over the pairs (h_t, e_{t+1}) whose two slots are valid, one negative per pair."""
    negatives, negative_ids = self._sample_negatives(behaviors, item_ids, mask)
    pairs = mask[:, :-1] & mask[:, 1:]                                           # v_t [B, T-1]
    keep_negative = pairs & (negative_ids != item_ids[:, 1:])
    history = interests[:, :-1]
    inputs = jnp.stack([jnp.concatenate([history, behaviors[:, 1:]], axis=-1),
                        jnp.concatenate([history, negatives], axis=-1)])         # [2, B, T-1, .]
    logits = aux_net(inputs, train)[..., 0]
    losses = optax.sigmoid_binary_cross_entropy(logits, jnp.array([1.0, 0.0])[:, None, None])
    total = (jnp.sum(jnp.where(pairs, losses[0], 0.0))
             + jnp.sum(jnp.where(keep_negative, losses[1], 0.0)))
    return total / jnp.maximum(jnp.sum(pairs), 1)

  def _sample_negatives(self, behaviors, item_ids, mask):
    """For each pair (b, t) one valid behaviour slot of the whole batch, drawn uniformly:
    (its token [B, T-1, D_b], its item id [B, T-1])."""
    flat_mask = mask.reshape(-1)
    valid_slots = jnp.nonzero(flat_mask, size=flat_mask.size, fill_value=0)[0]
    draws = jax.random.randint(self.make_rng("dropout"), item_ids[:, 1:].shape, 0,
                               jnp.maximum(jnp.sum(flat_mask), 1))
    slots = valid_slots[draws]
    return behaviors.reshape(-1, behaviors.shape[-1])[slots], item_ids.reshape(-1)[slots]
