"""Model registry: a config names a model by module name (``config.model_name = "base_model"``).

Each model is one file ``ctrjax/models/<name>.py`` defining ``Model``, a flax.linen module built
as ``Model(schema=..., **config.model)`` and called as ``model(batch, train=...)``, returning a
dict with ``logit`` [B] and any auxiliary outputs (attention weights, ...).
"""
from __future__ import annotations

import importlib
import pkgutil


def available() -> list[str]:
  return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get_model(name: str):
  """The ``Model`` class of ``ctrjax.models.<name>``; a clear error lists the known names."""
  if name not in available():
    raise ValueError(f"config.model_name={name!r} is not a model; available: {available()}")
  return importlib.import_module(f"{__name__}.{name}").Model
