"""Shared layers: embeddings by feature group, MLP, activations, pooling, attention, Transformer."""
from ctrjax.layers.attention import ScoredAttentionPool, attention_pool, masked_softmax
from ctrjax.layers.embedding import FeatureEmbedding, masked_mean, masked_sum
from ctrjax.layers.mlp import MLP, PReLU, activation
from ctrjax.layers.transformer import TransformerBlock

__all__ = ["FeatureEmbedding", "MLP", "PReLU", "ScoredAttentionPool", "TransformerBlock",
           "activation", "attention_pool", "masked_mean", "masked_softmax", "masked_sum"]
