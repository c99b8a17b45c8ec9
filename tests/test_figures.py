"""The paper-figure scripts on real trained runs: field-pair attention (experiments/field_attention.py:
AutoInt's Figure 7, FESeq's Figures 5-6) and DIN's Figure 5 (experiments/din_attention.py), each from
a 1-epoch run on the bundled ml-latest-small."""
import pathlib

import chex
import numpy as np
import pytest

import data_prep
from configs import autoint as autoint_config
from configs import din as din_config
from configs import feseq as feseq_config
from ctrjax.layers.interaction import field_names
from ctrjax.train import trainer
from experiments import din_attention, field_attention

REPO = pathlib.Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def _train(config, workdir):
  config.dataset.name, config.dataset.out_root = "ml-latest-small", str(REPO / "data" / "prepared")
  config.num_epochs, config.batch_size, config.progress_bar = 1, 1024, False
  trainer.train_and_evaluate(config, workdir, data_prep.prepare(config.dataset))
  return workdir


@pytest.fixture(scope="module")
def autoint_run(tmp_path_factory):
  config = autoint_config.get_config("plain")
  config.model.num_layers = 2
  return _train(config, tmp_path_factory.mktemp("autoint") / "run")


def test_autoint_figure_maps_are_attention_rows_over_the_test_set(autoint_run, tmp_path):
  sample, mean, names, row = field_attention.attention_maps(autoint_run, layer=1)
  setup, _, _ = trainer.load_best(autoint_run, data_prep.prepare_for_workdir(autoint_run))
  fields = len(field_names(setup.dataset.schema))
  assert names == field_names(setup.dataset.schema)
  chex.assert_shape((sample, mean), ((fields, fields), (fields, fields)))
  np.testing.assert_allclose(sample.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(mean.sum(-1), 1.0, atol=1e-5)
  assert setup.dataset.columns["test"][setup.dataset.schema.label.name][row] == 1
  assert not np.allclose(sample, mean)              # one sample is not the average
  png = field_attention.figure(autoint_run, tmp_path / "fig7.png")
  assert png.read_bytes()[:8] == PNG


def test_feseq_figure_maps_its_interaction_fields(tmp_path):
  config = feseq_config.get_config()
  config.model.dnn.hidden, config.model.din_hidden, config.model.pooling_dim = (32,), (16,), 16   # small: the
  config.model.interaction_layers = config.model.target_interaction_layers = 1                     # maps' shape stays
  run = _train(config, tmp_path / "feseq")
  sample, mean, names, _ = field_attention.attention_maps(run)
  setup, _, _ = trainer.load_best(run, data_prep.prepare_for_workdir(run))
  assert names == setup.model.interaction_fields() and len(names) > 2
  chex.assert_shape((sample, mean), ((len(names), len(names)),) * 2)
  np.testing.assert_allclose(mean.sum(-1), 1.0, atol=1e-5)
  assert field_attention.figure(run, tmp_path / "fig5.png").read_bytes()[:8] == PNG


def test_din_figure_draws_and_the_field_figure_refuses_a_din_run(tmp_path):
  run = _train(din_config.get_config(), tmp_path / "din")
  with pytest.raises(ValueError, match=r"model 'din', expected one of \('autoint', 'feseq'\)"):
    field_attention.attention_maps(run)
  png = din_attention.figure(run, tmp_path / "fig5.png")
  assert png.read_bytes()[:8] == PNG
