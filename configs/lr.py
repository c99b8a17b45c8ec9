"""Logistic regression (one weight per id; behaviours as a mean-pooled multi-hot field) on
ml-latest-small, with everything else as in configs/base.py.

  ./run.sh configs/lr.py [--config.seed=1]
"""
import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = base.get_config(arg)
  c.model_name = "lr"
  c.model = ml_collections.ConfigDict(dict(init_std=1e-4))
  return c
