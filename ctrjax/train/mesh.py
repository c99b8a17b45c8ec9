"""Data parallelism with jax.jit + NamedSharding: batches split over a 1-D ``data`` mesh axis,
parameters and optimizer state replicated. The same code runs on 1 device, N devices or N hosts."""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from ctrjax.errors import ConfigError


def make_mesh(num_devices: int = 0) -> Mesh:
  """Mesh over the first ``num_devices`` global devices (0 = all), axis ``data``, Auto axis type.

  Auto (not make_mesh's default Explicit) lets nn.Embed's gather with a replicated table and
  batch-sharded ids compile without sharding annotations.
  """
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise ConfigError(f"config.num_devices={num_devices} but only {len(devices)} devices exist")
    if jax.process_count() > 1 and num_devices != len(devices):
      raise ConfigError("config.num_devices must be 0 (all devices) in a multi-process run")
    devices = devices[:num_devices]
  return Mesh(np.array(devices), ("data",), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def to_global(local_batch, mesh: Mesh):
  """This process's rows -> global arrays sharded along ``data`` (rows of process p come p-th)."""
  sharding = batch_sharded(mesh)
  if jax.process_count() == 1:               # one transfer call for the whole tree: ~2x faster
    return jax.device_put(local_batch, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      local_batch)
