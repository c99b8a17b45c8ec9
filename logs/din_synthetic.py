import ml_collections
from configs import din
from configs.ablation_mian import SYNTHETIC

def get_config(arg=None):
  c = din.get_config()
  c.dataset.name = "synthetic"
  c.dataset.synthetic = ml_collections.ConfigDict(SYNTHETIC)
  c.progress_bar = False
  return c
