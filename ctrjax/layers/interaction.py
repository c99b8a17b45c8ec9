"""Feature-interaction layers over field vectors x [B, F, d] (FM, PNN, DeepFM, AFM, NFM, HOFM, DCN,
DCNv2, xDeepFM, AutoInt, FinalMLP, FINAL)."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctrjax.data.schema import Schema
from ctrjax.layers.embedding import FeatureEmbedding, masked_mean, pooled_fields
from ctrjax.layers.mlp import XAVIER, apply_activation


def fm_pairwise(x: jax.Array) -> jax.Array:
  """Σ_{i<j} ⟨x_i, x_j⟩ [B] by the sum-square trick: ½ Σ_k [(Σ_f x_fk)² − Σ_f x_fk²]."""
  return 0.5 * jnp.sum(jnp.square(jnp.sum(x, axis=1)) - jnp.sum(jnp.square(x), axis=1), axis=-1)


def inner_products(x: jax.Array) -> jax.Array:
  """⟨x_i, x_j⟩ for every pair i < j [B, F(F−1)/2] (IPNN's product signals), row-major pair order."""
  i, j = jnp.triu_indices(x.shape[1], k=1)
  return jnp.sum(x[:, i] * x[:, j], axis=-1)


class FirstOrder(nn.Module):
  """b + Σ_f w_f(x_f): one scalar weight per id (FuxiCTR's LogisticRegression);
  multi-valued fields and behaviour sequences contribute the mean of their ids' weights,
  numeric fields w·x. Returns the logit term [B]."""
  schema: Schema
  init_std: float = 1e-4

  @nn.compact
  def __call__(self, batch: dict) -> jax.Array:
    weights = FeatureEmbedding(self.schema, dim=1, embedding_init=nn.initializers.normal(self.init_std),
                               name="embedding")(batch)
    terms = [v[:, 0] for g in ("user", "item", "context") for v in weights[g].values()]
    terms += [masked_mean(v, batch["behavior"]["mask"], axis=1)[:, 0] for v in weights["behavior"].values()]
    return self.param("bias", nn.initializers.zeros, ()) + jnp.sum(jnp.stack(terms, -1), -1)


def field_vectors(emb: dict, batch: dict, pooling: str = "mean") -> jax.Array:
  """The field matrix E [B, F, d] of the feature-interaction models (as FuxiCTR's): one vector per
  field in ``pooled_fields`` order, a behaviour field pooled over its valid positions (mean: a
  history is one multi-hot field for the non-sequence baselines)."""
  mask = batch["behavior"]["mask"] if emb["behavior"] else None
  return jnp.stack(list(pooled_fields(emb, mask, pooling).values()), axis=1)


def field_names(schema: Schema) -> list[str]:
  """The field of each row of ``field_vectors`` (user, item, context, then behaviour fields), to
  label attention heat maps."""
  return [f.name for g in ("user", "item", "context", "behavior") for f in schema.group(g)]


def bi_interaction(x: jax.Array) -> jax.Array:
  """NFM's Bi-Interaction pooling Σ_{i<j} x_i ∘ x_j [B, d] = ½ [(Σ_f x_f)² − Σ_f x_f²]."""
  return 0.5 * (jnp.square(jnp.sum(x, axis=1)) - jnp.sum(jnp.square(x), axis=1))


def pairwise_products(x: jax.Array) -> jax.Array:
  """x_i ∘ x_j for every pair i < j [B, F(F−1)/2, d] (AFM), in ``inner_products``' pair order."""
  i, j = jnp.triu_indices(x.shape[1], k=1)
  return x[:, i] * x[:, j]


def anova_kernel(x: jax.Array, degree: int) -> jax.Array:
  """ANOVA kernel of ``degree`` t over the fields, summed over factors [B]:
  Σ_k Σ_{i_1<…<i_t} Π_s x_{i_s,k}, by the dynamic programme of Blondel et al. (HOFM, NIPS'16,
  Alg. 1) a_t(j) = a_t(j−1) + x_j ∘ a_{t−1}(j−1), a_0 = 1, a_t(0) = 0: O(F·t·d) instead of the
  O(F^t·d) sum over all t-subsets. Degree 2 equals ``fm_pairwise``."""
  if degree < 1:
    raise ValueError(f"ANOVA degree={degree!r}: expected >= 1")
  a = [jnp.ones_like(x[:, 0])] + [jnp.zeros_like(x[:, 0])] * degree   # a_t over the fields seen so far
  for j in range(x.shape[1]):
    for t in range(degree, 0, -1):        # descending: a_{t−1} is still the value before field j
      a[t] = a[t] + x[:, j] * a[t - 1]
  return jnp.sum(a[degree], axis=-1)


class CrossLayer(nn.Module):
  """DCN cross layer (Wang et al., ADKDD'17, eq. 3): x_{l+1} = x_0 (x_lᵀ w) + b + x_l, w, b ∈ R^D
  (FuxiCTR ``CrossInteraction``: w Xavier-normal, b zeros)."""

  @nn.compact
  def __call__(self, x0: jax.Array, x: jax.Array) -> jax.Array:
    w = self.param("kernel", XAVIER, (x.shape[-1], 1))
    b = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
    return x0 * (x @ w) + b + x


class CrossLayerV2(nn.Module):
  """DCNv2 full-rank cross layer (Wang et al., WWW'21, eq. 1): x_{l+1} = x_0 ∘ (W x_l + b) + x_l,
  W ∈ R^{D×D}."""

  @nn.compact
  def __call__(self, x0: jax.Array, x: jax.Array) -> jax.Array:
    return x0 * nn.Dense(x.shape[-1], kernel_init=XAVIER, name="dense")(x) + x


class CrossLayerMix(nn.Module):
  """DCNv2 low-rank mixture of experts (DCNv2 §3.2 eq. 3–4, FuxiCTR/DeepCTR ``CrossNetMix``):
  x_{l+1} = Σ_i softmax_i(g_iᵀ x_l) · x_0 ∘ (U_i tanh(C_i tanh(V_iᵀ x_l)) + b) + x_l,
  U_i, V_i ∈ R^{D×r}, C_i ∈ R^{r×r}, one gate vector g_i per expert, b shared by the experts.
  U, V, C Xavier-normal per expert, b zeros."""
  low_rank: int = 32
  num_experts: int = 4

  @nn.compact
  def __call__(self, x0: jax.Array, x: jax.Array) -> jax.Array:
    dim, e, r = x.shape[-1], self.num_experts, self.low_rank
    per_expert = nn.initializers.xavier_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))
    u = self.param("u", per_expert, (e, dim, r))
    v = self.param("v", per_expert, (e, dim, r))
    c = self.param("c", per_expert, (e, r, r))
    b = self.param("bias", nn.initializers.zeros, (dim,))
    low = jnp.tanh(jnp.einsum("bd,edr->ber", x, v))
    low = jnp.tanh(jnp.einsum("ber,esr->bes", low, c))                       # C_i applied to low
    experts = x0[:, None, :] * (jnp.einsum("ber,edr->bed", low, u) + b)      # [B, E, D]
    gates = jax.nn.softmax(nn.Dense(e, use_bias=False, kernel_init=XAVIER, name="gate")(x), axis=-1)
    return jnp.einsum("be,bed->bd", gates, experts) + x


class CIN(nn.Module):
  """Compressed Interaction Network (xDeepFM, Lian et al., KDD'18, eq. 6):
  X^k_{h,:} = act(Σ_{i,j} W^{k,h}_{ij} (X^{k−1}_{i,:} ∘ X^0_{j,:})), a 1×1 convolution over the
  H_{k−1}·F outer-product channels (no bias, as the paper's equation); each kept map is sum-pooled
  over d. split_half (the paper's default, DeepCTR, Microsoft's ``direct=False``): half of each
  non-final layer's maps feed the next layer, the other half go to the output; off (FuxiCTR):
  every map does both. Returns p⁺ [B, Σ output maps]."""
  layer_sizes: Sequence[int] = (200, 200, 200)
  split_half: bool = True
  activation: str = "identity"

  @nn.compact
  def __call__(self, x0: jax.Array, train: bool = False) -> jax.Array:
    if self.split_half and any(h % 2 for h in self.layer_sizes[:-1]):
      raise ValueError(f"model.cin_layers={tuple(self.layer_sizes)!r}: with split_half every layer but "
                       f"the last needs an even number of maps")
    b, _, d = x0.shape
    x, pooled = x0, []
    for k, maps in enumerate(self.layer_sizes):
      outer = jnp.einsum("bid,bjd->bijd", x, x0).reshape(b, -1, d)              # [B, H·F, d]
      z = nn.Dense(maps, use_bias=False, kernel_init=XAVIER, name=f"layer{k}")(outer.swapaxes(1, 2))
      z = apply_activation(self.activation, z, train).swapaxes(1, 2)            # [B, maps, d]
      if self.split_half and k < len(self.layer_sizes) - 1:
        x, z = z[:, : maps // 2], z[:, maps // 2:]
      else:
        x = z
      pooled.append(jnp.sum(z, axis=-1))
    return jnp.concatenate(pooled, axis=-1)


AUTOINT_VARIANTS = ("paper", "official")


class InteractingLayer(nn.Module):
  """AutoInt interacting layer over fields x [B, F, d_in] -> ([B, F, H·d'], attention [B, H, F, F]).

  paper (eq. 5–8): α^h_{m,k} = softmax_k(⟨W^h_Q e_m, W^h_K e_k⟩), ẽ^h_m = Σ_k α^h_{m,k} W^h_V e_k,
  ẽ_m = ⊕_h ẽ^h_m, e^Res_m = ReLU(ẽ_m + W_Res e_m) (ReLU(ẽ_m) without the residual); linear maps
  without biases. official (the official code, featureRec/autoint/model.py): Q, K, V and the residual
  are ReLU(Dense + bias), scores / √d', then LayerNorm(ε=1e-8) after the ReLU. The returned
  attention is before the (official code's) attention dropout, so each row sums to 1.
  """
  num_heads: int = 2
  head_dim: int = 32
  residual: bool = True
  variant: str = "paper"
  attention_dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    if self.variant not in AUTOINT_VARIANTS:
      raise ValueError(f"model.variant={self.variant!r}; choose from {AUTOINT_VARIANTS}")
    official = self.variant == "official"
    b, f, _ = x.shape
    width = self.num_heads * self.head_dim

    def project(name: str) -> jax.Array:
      y = nn.Dense(width, use_bias=official, kernel_init=XAVIER, name=name)(x)
      return nn.relu(y) if official else y

    heads = (b, f, self.num_heads, self.head_dim)
    q, k, v = (project(name).reshape(heads) for name in ("query", "key", "value"))
    scores = jnp.einsum("bmhc,bkhc->bhmk", q, k)
    if official:
      scores = scores / jnp.sqrt(self.head_dim)
    attention = jax.nn.softmax(scores, axis=-1)
    weights = nn.Dropout(self.attention_dropout, deterministic=not train)(attention)
    out = jnp.einsum("bhmk,bkhc->bmhc", weights, v).reshape(b, f, width)
    if self.residual:
      out = out + project("residual")
    out = nn.relu(out)
    if official:
      out = nn.LayerNorm(epsilon=1e-8, name="layer_norm")(out)
    return out, attention


class InteractionAggregation(nn.Module):
  """FinalMLP's multi-head bilinear fusion (Mao et al., AAAI'23) of two stream outputs x [B, Dx],
  y [B, Dy] into a logit [B]: w_xᵀx + w_yᵀy + Σ_h x_hᵀ W_h y_h + b over ``num_heads`` chunks x_h,
  y_h (FuxiCTR ``InteractionAggregation``; W Xavier-normal over the flattened [H·Dx/H·Dy/H, 1])."""
  num_heads: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    h = self.num_heads
    if x.shape[-1] % h or y.shape[-1] % h:
      raise ValueError(f"model.num_heads={h}: must divide both stream widths ({x.shape[-1]}, {y.shape[-1]})")
    xh, yh = x.reshape(x.shape[0], h, -1), y.reshape(y.shape[0], h, -1)
    w = self.param("bilinear", nn.initializers.xavier_normal(in_axis=(0, 1, 2), out_axis=()),
                   (h, xh.shape[-1], yh.shape[-1]))
    linear = nn.Dense(1, kernel_init=XAVIER, name="x")(x) + nn.Dense(1, kernel_init=XAVIER, name="y")(y)
    return linear[:, 0] + jnp.einsum("bhi,hij,bhj->b", xh, w, yh)


FACTORIZED_RESIDUALS = ("concat", "sum")


class FactorizedInteraction(nn.Module):
  """FINAL's factorized interaction layer, a drop-in for Dense(features) (FINAL official code,
  FuxiCTR ``FactorizedInteraction``): h = Dense(x) split in halves [h₂, h₁];
  concat: [h₂, h₁ ∘ h₂] (Dense to ``features``, as many weights as a Dense layer);
  sum: h₂ + h₁ ∘ h₂ (Dense to 2·features). The product raises the polynomial degree per layer."""
  features: int
  residual_type: str = "concat"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.residual_type not in FACTORIZED_RESIDUALS:
      raise ValueError(f"model.residual_type={self.residual_type!r}; choose from {FACTORIZED_RESIDUALS}")
    concat = self.residual_type == "concat"
    if concat and self.features % 2:
      raise ValueError(f"FINAL block width {self.features}: residual_type='concat' needs even widths")
    h = nn.Dense(self.features if concat else 2 * self.features, kernel_init=XAVIER, name="dense")(x)
    h2, h1 = jnp.split(h, 2, axis=-1)
    return jnp.concatenate([h2, h1 * h2], axis=-1) if concat else h2 + h1 * h2
