"""Every config file and every variant of every grid builds its model on its dataset's schema.

Tracing only (jax.eval_shape), so a typo in a variant's field, a model that does not fit a
dataset's schema or a bad grid section fails here in seconds rather than an hour into a grid.
"""
import importlib
import re

import jax
import numpy as np
import pytest

import data_prep
from configs.common import parse_arg
from ctrjax.data import loader
from ctrjax.data.dataset import Dataset
from ctrjax.data.packing import BatchLayout
from ctrjax.models import build_model
from experiments.grid import with_overrides
from experiments.main import load_config_module
from tests.conftest import REPO, shared_path

CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.py") if p.name not in ("__init__.py", "common.py"))
# Grid arguments whose dataset has a different schema (or grid) from the default one.
OTHER_SCHEMAS = {"ablation_autoint.py": ("dataset=ml-100k",), "ablation_mian.py": ("dataset=synthetic",),
                 "mian_factorial.py": ("dataset=ml-100k",)}


def _cases():
  for name in CONFIGS:
    module = load_config_module(str(REPO / "configs" / name))
    if hasattr(module, "get_grid"):
      for arg in (None, *OTHER_SCHEMAS.get(name, ())):
        for variant in module.get_grid(arg).variants:
          yield pytest.param(name, arg, variant, id=f"{name}{':' + arg if arg else ''}:{variant}")
    else:
      yield pytest.param(name, None, None, id=name)


_SAMPLES: dict = {}


def _sample_batch(config):
  """A 4-row training batch of the config's dataset (prepared once per dataset config)."""
  shared = {"criteo": "criteo-kaggle-first10k", "ml-100k": "movielens-100k"}.get(config.dataset.name)
  if shared:
    shared_path("data", shared)
  key = repr(config.dataset.to_dict())
  if key not in _SAMPLES:
    dataset_config = config.dataset
    dataset_config.out_root = str(REPO / "data" / "prepared")
    dataset = Dataset(data_prep.prepare(dataset_config), validate=False)
    batch = loader.gather(dataset, "train", np.arange(4), np.ones(4, np.float32))
    layout = BatchLayout.from_schema(dataset.schema)
    _SAMPLES[key] = (dataset.schema, layout.unpack(layout.pack(batch)))
  return _SAMPLES[key]


@pytest.mark.parametrize("config_file,arg,variant", list(_cases()))
def test_config_builds_its_model(config_file, arg, variant):
  module = load_config_module(str(REPO / "configs" / config_file))
  config = module.get_config(arg)
  if variant is not None:
    config = with_overrides(config, module.get_grid(arg).variants[variant], seed=0)
  if config.dataset.name == "synthetic":
    config.dataset.num_rows = 2_000
  schema, batch = _sample_batch(config)
  model = build_model(config.model_name, schema, config.model)
  shapes = jax.eval_shape(lambda b: model.init(jax.random.PRNGKey(0), b, train=False), batch)
  assert jax.tree.leaves(shapes["params"]), f"{config_file}:{variant}: no parameters"
  out = jax.eval_shape(lambda v, b: model.apply(v, b, train=False), shapes, batch)
  assert out["logit"].shape == (4,)


@pytest.mark.parametrize("config_file", CONFIGS)
def test_config_accepts_its_documented_arguments_and_rejects_others_naming_itself(config_file):
  module = importlib.import_module(f"configs.{config_file.removesuffix('.py')}")
  entry_points = [module.get_config] + ([module.get_grid] if hasattr(module, "get_grid") else [])
  for arg in re.findall(rf"configs/{re.escape(config_file)}:(\S+)", module.__doc__):   # ./run.sh FILE:ARG
    for entry in entry_points:
      entry(arg)
  for entry in entry_points:
    with pytest.raises(ValueError, match=rf"^configs/{re.escape(config_file)}: bad argument 'nonsense'"):
      entry("quick,nonsense")


def test_parse_arg_types_flags_and_choices():
  a = parse_arg("dice,dataset=ml-100k", quick=False, dice=False, dataset=("ml-latest-small", "ml-100k"))
  assert (a.quick, a.dice, a.dataset) == (False, True, "ml-100k")
  assert parse_arg(None, dataset=("ml-latest-small", "ml-100k")).dataset == "ml-latest-small"
  for bad in ("dice=1", "dataset", "dataset=ml-1m", "quick,quick"):
    with pytest.raises(ValueError, match="bad argument"):
      parse_arg(bad, quick=False, dice=False, dataset=("ml-latest-small", "ml-100k"))
