"""The dataset registry (data_prep/__init__.py): option declarations that cannot drift from the modules'
prepare functions, refused options named, switch_dataset, and the default configs' prepared directories
(the cache keys and names of the datasets prepared before the registry existed)."""
import importlib
import inspect
import json

import pytest

import data_prep
from ctrjax.errors import UserError
from data_prep import synthetic
from tests.conftest import REPO, shared_path

# prepare parameters that are no config.dataset option: where to write, and knobs that leave the data as is.
NOT_OPTIONS = ("out_root", "out_dir", "force", "chunk_bytes", "chunk_rows")


@pytest.mark.parametrize("name", sorted(data_prep.DATASETS))
def test_option_declarations_are_the_prepare_function_parameters(name):
  dataset = data_prep.DATASETS[name]
  prepare = dataset.prepare_function(name)
  if prepare is synthetic.prepare:   # prepare(out_root, force, **kwargs) hands the options to generate
    prepare = synthetic.generate
  parameters = inspect.signature(prepare).parameters
  assert all(p.kind is not p.VAR_KEYWORD for p in parameters.values()), "**kwargs hides the options"
  assert ({k: p.default for k, p in parameters.items() if k not in NOT_OPTIONS}
          == {k: option.default for k, option in dataset.options.items()})


def test_dataset_config_holds_the_common_fields_and_the_chosen_dataset_options_only():
  config = data_prep.dataset_config("criteo", min_count=3)
  assert config.to_dict() == {"name": "criteo", "out_root": "data/prepared", "validate": True, "path": "",
                              "raw_dir": "", "min_count": 3, "numeric": "value", "vocab_rows": "train",
                              "seed": 2018}
  assert set(data_prep.dataset_config("path", path="/d").keys()) == {"name", "out_root", "validate", "path"}


def test_an_unknown_option_or_name_is_refused_naming_the_field():
  config = data_prep.dataset_config("ml-latest-small")
  config.name = "criteo"                     # as --config.dataset.name=criteo on a MovieLens config
  with pytest.raises(ValueError, match=r"config\.dataset\.holdout: dataset 'criteo' takes no option "
                                       r"'holdout' \(nor \['max_len', 'protocol', 'sequence_fields'\]\)") as e:
    data_prep.prepare(config)
  assert "'min_count'" in str(e.value)       # the valid choices
  with pytest.raises(ValueError, match=r"config\.dataset\.holdout: dataset 'avazu'"):
    data_prep.dataset_config("avazu", holdout=5)
  with pytest.raises(ValueError, match=r"config\.dataset\.name='ml-20m'; choose from \[.*'ml-1m'"):
    data_prep.dataset_config("ml-20m")
  with pytest.raises(ValueError, match=r"config\.dataset\.name='path' needs config\.dataset\.path"):
    data_prep.prepare(data_prep.dataset_config("path"))


def test_switch_dataset_keeps_the_shared_options_and_takes_the_new_defaults_for_the_rest():
  movielens = data_prep.dataset_config("ml-latest-small", max_len=10, holdout=5, sequence_fields="feseq",
                                       out_root="/prep", validate=False)
  same_module = data_prep.switch_dataset(movielens, "ml-100k")
  assert same_module.to_dict() == {**movielens.to_dict(), "name": "ml-100k"}
  assert movielens.name == "ml-latest-small"                     # the argument is left as it was
  other = data_prep.switch_dataset(movielens, "synthetic")
  assert other.to_dict() == {**data_prep.dataset_config("synthetic").to_dict(),
                             "max_len": 10, "out_root": "/prep", "validate": False}
  back = data_prep.switch_dataset(data_prep.switch_dataset(movielens, "criteo"), "ml-latest-small")
  assert (back.max_len, back.holdout) == (30, 1)                 # criteo has neither: the defaults


MOVIELENS_FESEQ = {"protocol": "din", "max_len": 10, "holdout": 5, "sequence_fields": "feseq"}


@pytest.mark.parametrize("config_file,arg,shared,directory,key", [
    ("base", None, None, "ml-latest-small-din-len30-holdout5",
     {"dataset": "ml-latest-small", "protocol": "din", "max_len": 30, "holdout": 5}),
    ("feseq", None, None, "ml-latest-small-din-len10-holdout5-feseq",
     {"dataset": "ml-latest-small", **MOVIELENS_FESEQ}),
    ("ablation_feseq", None, "movielens-100k", "ml-100k-din-len10-holdout5-feseq",
     {"dataset": "ml-100k", **MOVIELENS_FESEQ}),
    ("ablation_autoint", None, "criteo-kaggle-first10k", "criteo-criteo_train_first10000-min10-value-seed2018",
     {"dataset": "criteo", "min_count": 10, "vocab_rows": "train", "seed": 2018, "numeric": "value"}),
    ("ablation_autoint", "dataset=ml-100k", "movielens-100k", "ml-100k-autoint7",
     {"dataset": "ml-100k", "protocol": "autoint7"}),
    ("ablation_mian", "dataset=synthetic", None, "synthetic-229a28caa6", None),   # the name hashes the key
])
def test_default_configs_prepare_into_the_directories_and_cache_keys_of_before(config_file, arg, shared,
                                                                                directory, key):
  if shared:
    shared_path("data", shared)
  config = importlib.import_module(f"configs.{config_file}").get_config(arg).dataset
  config.out_root = str(REPO / "data" / "prepared")
  if config.name == "synthetic":
    config.num_rows = 2_000              # as tests/test_configs.py prepares it
  path = data_prep.prepare(config)
  assert path == REPO / "data" / "prepared" / directory
  if key is not None:                    # the raw files' path, also in the key, depends on the checkout
    args = json.loads((path / "stats.json").read_text())["prep"]["args"]
    assert {k: v for k, v in args.items() if k not in ("raw_dir", "raw")} == key


def test_prepare_for_workdir_reads_the_run_config(tmp_path):
  dataset = tmp_path / "prepared"
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "config.json").write_text(json.dumps(
      {"seed": 0, "dataset": data_prep.dataset_config("path", path=str(dataset)).to_dict()}))
  assert data_prep.prepare_for_workdir(tmp_path / "run") == dataset
  with pytest.raises(UserError, match="no config.json"):
    data_prep.prepare_for_workdir(tmp_path)
