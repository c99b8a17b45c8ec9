"""AutoInt+ (CIKM'19) with the paper's setting (§5.1.4), on ml-latest-small.

  ./run.sh configs/autoint.py                     # AutoInt+: interacting layers + joint DNN
  ./run.sh configs/autoint.py:plain               # AutoInt (no DNN)
  ./run.sh configs/autoint.py:quick               # 2 epochs ('plain,quick' also works)
  ./run.sh configs/autoint.py:official            # the official code's ReLU Q/K/V, 1/√d', LayerNorm

Embedding 16, 3 interacting layers of 2 heads × d'=32 with residual connections, Adam 1e-3 (paper
§5.1.4); every field, the history included (mean-pooled), is one of the M fields. The paper says
only that AutoInt+ adds "a two-layer feed-forward neural network"; the official Criteo script
(run_joint_criteo.sh) uses 400-400 ReLU, taken here. Dropout is off: the paper grid-searches it on
MovieLens-1M (official MovieLens run: attention keep 0.6, embedding keep 0.9, i.e.
--config.model.attention_dropout=0.4 --config.model.embedding_dropout=0.1). Batch size and early
stopping are configs/base.py's, shared with the other baselines (the paper: batch 1024).
"""
import ml_collections

from configs import base
from configs.common import parse_arg
from ctrjax.models import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, quick=False, plain=False, official=False)
  c = base.get_config("quick" if a["quick"] else None)
  c.model_name = "autoint"
  c.model = default_config("autoint", variant="official" if a["official"] else "paper",
                           dnn={"hidden": () if a["plain"] else (400, 400)})
  return c
