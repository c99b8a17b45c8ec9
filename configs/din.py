"""DIN (Deep Interest Network, KDD'18) with the paper's Table 3 setting, on ml-latest-small.

  ./run.sh configs/din.py                              # DIN (PReLU)
  ./run.sh configs/din.py:dice                         # DIN with Dice
  ./run.sh configs/din.py:quick                        # 2 epochs
  ./run.sh configs/din.py --config.dataset.name=ml-100k
  ./run.sh tune configs/din.py --trials 20             # tuned on valid AUC, then 5 seeds

Attention MLP 80-40 and prediction MLP 200-80 with PReLU (or Dice in both), unnormalised
attention weights (the paper; model.attention_weighting='softmax' = the official codes),
embedding 16 per field, Adam 1e-3, batch 128, early stopping on valid AUC. The paper trains with
SGD (lr 1, decay 0.1, batch 32); our optimiser is the one every ctrjax baseline shares.
"""
import ml_collections

from configs import base
from configs.common import Choice, SearchSpace, parse_arg
from ctrjax.models import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, quick=False, dice=False)
  c = base.get_config("quick" if a["quick"] else None)
  c.model_name = "din"
  c.model = default_config("din", **({"dnn": {"activation": "dice"}} if a["dice"] else {}))
  return c


def get_search_space(arg: str | None = None) -> SearchSpace:
  """BaseModel's space (configs/base.py) and the widths of DIN's attention MLP (half, the paper's
  80-40, double)."""
  return {**base.get_search_space(), "model.attention_hidden": Choice(((40,), (80, 40), (160, 80)))}
