"""DMR (Deep Match to Rank, AAAI'20; the FESeq paper's baseline) on FESeq's MovieLens data.

  ./run.sh configs/dmr.py                          # ml-latest-small, early stopping on valid AUC
  ./run.sh configs/dmr.py:quick                    # 2 epochs
  ./run.sh configs/dmr.py --config.model.aux_loss_weight=0

The official code's setting (lvze92/DMR): user-to-item network (causal user vectors, relevance
u_T · v'_c with a separate output embedding, auxiliary match loss × 0.1 with negatives drawn from
the batch) and item-to-item network (target attention with position, relevance Σ s_t), attention
MLPs 80-40 sigmoid, position width 8, DNN 512-256-128 PReLU over the fields, Σ e_t, e_c ∘ Σ e_t, the
interest and both relevances. Data as configs/feseq.py (10 behaviours; the time gaps are not
used). Adam 1e-3, batch 128. Details: ctrjax/models/dmr.py.
"""
import ml_collections

from configs import base, feseq
from ctrjax.models import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = base.get_config(arg)
  feseq.use_feseq_data(c)
  c.model_name = "dmr"
  c.model = default_config("dmr")
  c.batch_size = 128
  c.optimizer.learning_rate = 1e-3
  return c
