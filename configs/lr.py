"""Logistic regression (one weight per id; behaviours as a mean-pooled multi-hot field) on
ml-latest-small, with everything else as in configs/base.py.

  ./run.sh configs/lr.py [--config.seed=1]
"""
import ml_collections

from configs import base
from ctrjax.models import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = base.get_config(arg)
  c.model_name = "lr"
  c.model = default_config("lr")
  return c
