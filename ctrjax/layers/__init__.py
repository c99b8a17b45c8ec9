"""Shared layers: embeddings by feature group, MLP, activations, pooling, attention, Transformer."""
from ctrjax.layers.attention import (LocalActivationUnit, ScoredAttentionPool, attention_pool,
                                     masked_softmax)
from ctrjax.layers.embedding import (FeatureEmbedding, behavior_aligned_item, masked_mean,
                                     masked_sum, pooled_fields)
from ctrjax.layers.mlp import DNN, MLP, Dice, PReLU, apply_activation, dense_initializer
from ctrjax.layers.transformer import TransformerBlock

__all__ = ["DNN", "Dice", "FeatureEmbedding", "LocalActivationUnit", "MLP", "PReLU", "ScoredAttentionPool",
           "TransformerBlock", "apply_activation", "attention_pool", "behavior_aligned_item",
           "dense_initializer", "masked_mean", "masked_softmax", "masked_sum", "pooled_fields"]
