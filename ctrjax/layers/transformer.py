"""Transformer encoder block with a key padding mask, in Pre-LN or original (Post-LN) order."""
from __future__ import annotations

import flax.linen as nn
import jax

NORMS = ("pre_ln", "post_ln")


class TransformerBlock(nn.Module):
  """One self-attention block over tokens x [B, T, D] with padding mask [B, T] (True = valid).

  pre_ln (Xiong et al. 2020; MIAN eq. 3-5):
    x = x + Drop(MHSA(LN(x))); x = x + Drop(FFN(LN(x)))
  post_ln (the original Transformer):
    x = LN(x + Drop(MHSA(x)));  x = LN(x + Drop(FFN(x)))
  FFN = Dense(ffn_hidden) -> ReLU -> Dense(D). Padded tokens are never attended to; their own
  outputs are meaningless and must be masked downstream. A key bias only shifts every score of a
  query by the same amount, so it never gets a gradient; attention_bias=False drops all four.
  """
  num_heads: int
  ffn_hidden: int | None = None        # None: 4 x the token width
  dropout: float = 0.0
  norm: str = "pre_ln"
  attention_bias: bool = True          # q/k/v/out projection biases, as in PyTorch's MHA
  kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
    if self.norm not in NORMS:
      raise ValueError(f"TransformerBlock norm={self.norm!r}; choose from {NORMS}")
    width = x.shape[-1]
    attention = nn.MultiHeadDotProductAttention(
        self.num_heads, qkv_features=width, out_features=width, use_bias=self.attention_bias,
        kernel_init=self.kernel_init, name="attention")
    attend = nn.make_attention_mask(mask, mask)

    def self_attention(h):
      return attention(h, h, mask=attend)

    def ffn(h):
      h = nn.Dense(self.ffn_hidden or 4 * width, kernel_init=self.kernel_init, name="ffn_hidden")(h)
      return nn.Dense(width, kernel_init=self.kernel_init, name="ffn_out")(nn.relu(h))

    drop = nn.Dropout(self.dropout, deterministic=not train)
    ln_attention, ln_ffn = nn.LayerNorm(name="ln_attention"), nn.LayerNorm(name="ln_ffn")
    if self.norm == "pre_ln":
      x = x + drop(self_attention(ln_attention(x)))
      return x + drop(ffn(ln_ffn(x)))
    x = ln_attention(x + drop(self_attention(x)))
    return ln_ffn(x + drop(ffn(x)))
