"""Shared layers: embeddings by feature group, MLP, activations, pooling."""
from ctrjax.layers.embedding import FeatureEmbedding, masked_mean, masked_sum
from ctrjax.layers.mlp import MLP, PReLU, activation

__all__ = ["FeatureEmbedding", "MLP", "PReLU", "activation", "masked_mean", "masked_sum"]
