"""Model registry: a config names a model by module name (``config.model_name = "base_model"``).

Each model is one file ``ctrjax/models/<name>.py`` defining ``Model``, a flax.linen module whose
dataclass fields and their defaults are the model's whole configuration (the paper's setting, or
the official code's where the paper is silent). A model with an MLP tower has one field ``dnn``
(``ctrjax.layers.mlp.DNN``). ``default_config(name, **overrides)`` turns the fields into a config
(``config.model``), ``build_model(name, schema, config.model)`` turns a config back into the module,
called as ``model(batch, train=...)`` and returning a dict with ``logit`` [B] and any auxiliary
outputs (attention weights, ...).
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import types
import typing
from typing import Any, Mapping

import flax.linen as nn
import ml_collections

from ctrjax.data.schema import Schema
from ctrjax.layers.mlp import DNN

_NOT_CONFIG = ("schema", "parent", "name")


def available() -> list[str]:
  return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get_model(name: str):
  """The ``Model`` class of ``ctrjax.models.<name>``; a clear error lists the known names."""
  if name not in available():
    raise ValueError(f"config.model_name={name!r} is not a model; available: {available()}")
  return importlib.import_module(f"{__name__}.{name}").Model


def _fields(name: str) -> dict[str, dataclasses.Field]:
  return {f.name: f for f in dataclasses.fields(get_model(name)) if f.name not in _NOT_CONFIG}


def _tuples(value: Any) -> Any:
  """Lists (a config read back from JSON) as tuples, recursively: module fields must be hashable."""
  return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _dnn(name: str, default: DNN, value: Mapping[str, Any] | DNN) -> DNN:
  """``value`` (a DNN, or a mapping of some of its fields) over the model's default tower."""
  if isinstance(value, DNN):
    return value
  value = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
  known = {f.name for f in dataclasses.fields(DNN)}
  unknown = sorted(set(value) - known)
  if unknown:
    raise ValueError(f"config.model.dnn has no field(s) {unknown} (model {name!r}); fields: {sorted(known)}")
  return dataclasses.replace(default, **{k: _tuples(v) for k, v in value.items()})


def build_model(name: str, schema: Schema, model_config: Mapping[str, Any]) -> nn.Module:
  """Model ``name`` on ``schema`` from ``model_config`` (``config.model``: a ConfigDict or a dict of
  some of the model's fields, the rest keeping their defaults; ``dnn`` a mapping of some of the
  tower's fields). An unknown field or a bad value raises a ValueError naming the field."""
  fields = _fields(name)
  is_config = isinstance(model_config, ml_collections.ConfigDict)
  config = model_config.to_dict() if is_config else dict(model_config)
  unknown = sorted(set(config) - set(fields))
  if unknown:
    raise ValueError(f"config.model does not fit model {name!r}: unexpected keyword argument(s) {unknown}; "
                     f"its fields: {sorted(fields)}")
  kwargs = {key: _tuples(value) for key, value in config.items()}
  if "dnn" in kwargs:
    kwargs["dnn"] = _dnn(name, fields["dnn"].default, config["dnn"])
  return get_model(name)(schema=schema, **kwargs)


def _optional_type(annotation: Any) -> type | None:
  """T of a field annotated ``T | None`` (a config field holding None needs its type for overrides)."""
  args = [a for a in typing.get_args(annotation) if a is not type(None)]
  if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
    return args[0]
  return None


def default_config(name: str, **overrides: Any) -> ml_collections.ConfigDict:
  """Every field of model ``name`` with its default, ``overrides`` applied (``dnn`` a mapping of
  some of the tower's fields): a full ``config.model``, so that command-line overrides such as
  ``--config.model.dnn.hidden="(64,32)"`` find every field and are type-checked."""
  fields = _fields(name)
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise ValueError(f"model {name!r} has no field(s) {unknown}; fields: {sorted(fields)}")
  hints = typing.get_type_hints(get_model(name))
  config = {}
  for key, field in fields.items():
    value = overrides.get(key, field.default)
    if key == "dnn":
      value = dataclasses.asdict(_dnn(name, field.default, value))
    elif value is None:
      value = ml_collections.FieldReference(None, field_type=_optional_type(hints[key]))
    config[key] = value
  return ml_collections.ConfigDict(config)
