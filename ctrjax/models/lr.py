"""LR: logistic regression, logit = b + sum of one scalar weight per field (FuxiCTR's LR).

Multi-valued fields and behaviour sequences enter as masked means of their ids' weights (the
history is a mean-pooled multi-hot field, as for every non-sequence baseline). The per-id weights
are params["embedding"], so the embedding regularisers apply to them.
"""
import jax

from ctrjax.layers.interaction import FirstOrder


class Model(FirstOrder):

  def __call__(self, batch: dict, train: bool = False) -> dict[str, jax.Array]:
    return {"logit": super().__call__(batch)}
