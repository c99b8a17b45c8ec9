"""MIAN: Multi-Interactive Attention Network (Zhang et al., WSDM'21).

Embedding layer (eq. 1-2): item token e_i = concat of the item fields' embeddings [B, D_i];
behaviour tokens E_b = concat of the behaviour fields' embeddings per position [B, T, D_b];
user and context fields give one token each, e_u^j and e_c^k [B, d].
Multi-interactive layer:
  IBIM (eq. 3-9): X = E_b (+ position embedding) -> one Transformer block -> h_t;
    V_t = [e_i ; h_t]; α_t = masked softmax_t tanh(V_t·w + b); R_ibim = Σ_t α_t V_t.
  IUIM / ICIM (eq. 10-13): V^j = [e_i ; e_u^j] (resp. e_c^k) with field-specific (W^j, b^j);
    R_iuim = Σ_j α_j V^j, R_icim likewise.
  GIM (eq. 14-15): tokens r = [e_i ; e_c ; e_b ; e_u ; R_ibim ; R_iuim ; R_icim], per-token
    (W_l, b_l), R_g = Σ_l α_l r_l.
Prediction layer (eq. 16-17): MLP (``dnn``: 32-8, ReLU, dropout 0.2) -> one logit (the paper's 2-way softmax
is a sigmoid on one logit).

Decisions (the paper leaves these open; each a field):
  * position_embedding: a learned [T, D_b] table added to E_b before the encoder, over absolute
    slots (behaviours are left-padded, so the newest is always slot T-1). Table 4's row "w/o both"
    is ibim_encoder="none" with position_embedding=False.
  * ibim_encoder: one block, FFN hidden = ffn_mult x D_b, dropout after attention and after the
    FFN, none on the attention weights. The attention projections have no biases, as in eq. 4
    (a key bias would get no gradient anyway); the FFN has them (eq. 5). No LayerNorm after the
    Pre-LN block: eq. 3-5 take h_b to be the block's output.
  * IBIM scores use one (w, b) shared over t: eq. 8's W_t read as one matrix, since per-slot
    weights would tie the score to a slot of a left-padded sequence rather than to a behaviour.
  * GIM tokens have different widths. gim_combine="sum" projects each r_l with its own bias-free
    Dense to gim_width (default 2 x D_i) and then scores and sums; "concat" scores each r_l at
    its own width and concatenates α_l·r_l.
  * e_b in GIM is the masked mean of the raw behaviour tokens E_b; e_u and e_c concatenate their
    group's field embeddings.
  * An ablated module (use_*=False, Table 3) leaves r, so GIM gets fewer tokens; use_gim=False
    concatenates the tokens instead (Table 3 row 5). A group without fields has no raw token.
    ``gim_tokens()`` names the tokens in order, i.e. the columns of attention["gim"].
  * Numeric fields embed as x·v (FeatureEmbedding), so every field token has width d.
  * Init: truncated normal (init_std) for the embedding tables and the position table (paper);
    biases 0, LayerNorm scale 1 and offset 0. Dense kernels are Xavier-normal by default (the
    FuxiCTR convention): dense_init for the Transformer, attention scores and GIM projections,
    dnn.kernel_init for the MLP. With the
    paper's 0.02 for every kernel, each layer shrinks the signal ~50x: the MLP's pre-activations
    start at ~1e-5, Adam's first ~1e-3 bias steps switch off every unit of the 8-wide ReLU layer
    within 5 steps and the model predicts a constant (3 of 16 runs of the quick ablation grid on
    ml-latest-small ended at AUC 0.5; Xavier on the MLP alone still left 1 of 16).
    dense_init="truncated_normal" with dnn.kernel_init="truncated_normal" restores the paper's
    setting (std 0.02, whatever init_std).
  * The behaviour mask is batch["behavior"]["mask"], never recomputed from ids. An empty history
    gives R_ibim = 0 and α_ibim = 0 (finite, also through the Transformer).
Returns {"logit": [B], "attention": {"ibim": [B, T], "iuim": [B, J], "icim": [B, K],
"gim": [B, len(gim_tokens())]}}, with a key only for each active module.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctrjax.data.schema import Schema
from ctrjax.layers import DNN, FeatureEmbedding, ScoredAttentionPool, TransformerBlock, masked_mean
from ctrjax.layers.attention import score_activation
from ctrjax.layers.mlp import dense_initializer

IBIM_ENCODERS = ("pre_ln", "post_ln", "none")
GIM_COMBINES = ("sum", "concat")
_MODULE_GROUPS = {"use_ibim": "behavior", "use_iuim": "user", "use_icim": "context"}


class Model(nn.Module):
  schema: Schema
  embed_dim: int = 16
  num_heads: int = 8
  ffn_mult: int = 4
  dropout: float = 0.2                  # Transformer
  dnn: DNN = DNN((32, 8), dropout=0.2)
  use_ibim: bool = True
  use_iuim: bool = True
  use_icim: bool = True
  use_gim: bool = True
  use_behavior_mean: bool = True        # e_b as a GIM token (paper); False with use_ibim=False takes
                                        # the behaviour group out of the model (a diagnostic, not a paper row)
  ibim_encoder: str = "pre_ln"          # 'pre_ln' (paper), 'post_ln' or 'none' (Table 4)
  position_embedding: bool = True
  score: str = "tanh"                   # 'tanh' (paper eq. 8) or 'linear'
  gim_combine: str = "sum"              # 'sum' or 'concat'
  gim_width: int | None = None          # gim_combine='sum' width; None: 2 x item token width
  init_std: float = 0.02
  dense_init: str = "xavier_normal"     # the other Dense kernels (DENSE_INITIALIZERS); paper 0.02

  def __post_init__(self):
    super().__post_init__()
    if self.ibim_encoder not in IBIM_ENCODERS:
      raise ValueError(f"model.ibim_encoder={self.ibim_encoder!r}; choose from {IBIM_ENCODERS}")
    dense_initializer(self.dense_init, "model.dense_init")
    if self.gim_combine not in GIM_COMBINES:
      raise ValueError(f"model.gim_combine={self.gim_combine!r}; choose from {GIM_COMBINES}")
    score_activation(self.score)
    if not self.schema.group("item"):
      raise ValueError("MIAN needs candidate-item fields; the dataset has none")
    for switch, group in _MODULE_GROUPS.items():
      if getattr(self, switch) and not self.schema.group(group):
        raise ValueError(f"{switch}=True but the dataset has no {group} fields; "
                         f"set model.{switch}=False")
    behavior_width = self.embed_dim * len(self.schema.group("behavior"))
    if self.use_ibim and self.ibim_encoder != "none" and behavior_width % self.num_heads:
      raise ValueError(f"behaviour token width {behavior_width} is not divisible by "
                       f"model.num_heads={self.num_heads}")

  def gim_tokens(self) -> tuple[str, ...]:
    """GIM's tokens in eq. 14 order, without ablated modules and fieldless groups."""
    present = {"e_i": True, "e_c": bool(self.schema.group("context")),
               "e_b": bool(self.schema.group("behavior")) and self.use_behavior_mean,
               "e_u": bool(self.schema.group("user")),
               "R_ibim": self.use_ibim, "R_iuim": self.use_iuim, "R_icim": self.use_icim}
    return tuple(name for name, on in present.items() if on)

  @nn.compact
  def __call__(self, batch: dict, train: bool = False) -> dict:
    init = nn.initializers.truncated_normal(self.init_std)
    kernel_init = dense_initializer(self.dense_init, "model.dense_init")
    emb = FeatureEmbedding(self.schema, self.embed_dim, init, name="embedding")(batch)
    item = jnp.concatenate(list(emb["item"].values()), axis=-1)                   # e_i [B, D_i]
    reps, attention = {"e_i": item}, {}
    for token, group in (("e_c", "context"), ("e_u", "user")):
      if emb[group]:
        reps[token] = jnp.concatenate(list(emb[group].values()), axis=-1)
    if emb["behavior"]:
      mask = batch["behavior"]["mask"]
      behaviors = jnp.concatenate(list(emb["behavior"].values()), axis=-1)         # [B, T, D_b]
      if self.use_behavior_mean:
        reps["e_b"] = masked_mean(behaviors, mask, axis=1)
      if self.use_ibim:
        reps["R_ibim"], attention["ibim"] = self._ibim(item, behaviors, mask, train, init, kernel_init)
    if self.use_iuim:
      reps["R_iuim"], attention["iuim"] = self._field_interaction(item, emb["user"], "iuim", kernel_init)
    if self.use_icim:
      reps["R_icim"], attention["icim"] = self._field_interaction(item, emb["context"], "icim",
                                                                  kernel_init)
    tokens = [reps[name] for name in self.gim_tokens()]
    if self.use_gim:
      x, attention["gim"] = self._gim(tokens, kernel_init)
    else:
      x = jnp.concatenate(tokens, axis=-1)
    logit = self.dnn.tower(output_dim=1)(x, train)
    return {"logit": logit[:, 0], "attention": attention}

  def _ibim(self, item, behaviors, mask, train, init, kernel_init):
    """Item-behaviours interaction (eq. 3-9): (R_ibim [B, D_i + D_b], α [B, T])."""
    x = behaviors
    if self.position_embedding:
      x = x + self.param("position_embedding", init, behaviors.shape[1:])
    if self.ibim_encoder != "none":
      x = TransformerBlock(self.num_heads, self.ffn_mult * x.shape[-1], dropout=self.dropout,
                           norm=self.ibim_encoder, attention_bias=False, kernel_init=kernel_init,
                           name="ibim_encoder")(x, mask, train)
    items = jnp.broadcast_to(item[:, None], (*x.shape[:2], item.shape[-1]))
    return ScoredAttentionPool(self.score, per_token_weights=False, kernel_init=kernel_init,
                               name="ibim_attention")(jnp.concatenate([items, x], -1), mask)

  def _field_interaction(self, item, fields, name, kernel_init):
    """IUIM / ICIM (eq. 10-13): V^j = [e_i ; e^j] with field-specific scores -> (R, α [B, J])."""
    tokens = jnp.stack([jnp.concatenate([item, e], axis=-1) for e in fields.values()], axis=1)
    return ScoredAttentionPool(self.score, per_token_weights=True, kernel_init=kernel_init,
                               name=f"{name}_attention")(tokens, jnp.ones(tokens.shape[:2], bool))

  def _gim(self, tokens: list[jax.Array], kernel_init):
    """Global interaction (eq. 14-15) over tokens of different widths -> (R_g, α [B, L])."""
    names = self.gim_tokens()
    if self.gim_combine == "sum":
      width = self.gim_width or 2 * tokens[0].shape[-1]
      projected = jnp.stack([nn.Dense(width, use_bias=False, kernel_init=kernel_init,
                                      name=f"gim_project_{n}")(r) for n, r in zip(names, tokens)],
                            axis=1)                                               # [B, L, D_g]
      return ScoredAttentionPool(self.score, per_token_weights=True, kernel_init=kernel_init,
                                 name="gim_attention")(projected,
                                                       jnp.ones(projected.shape[:2], bool))
    scores = jnp.concatenate([nn.Dense(1, kernel_init=kernel_init, name=f"gim_score_{n}")(r)
                              for n, r in zip(names, tokens)], axis=-1)           # [B, L]
    alpha = jax.nn.softmax(score_activation(self.score)(scores), axis=-1)
    return jnp.concatenate([alpha[:, l, None] * r for l, r in enumerate(tokens)], axis=-1), alpha
