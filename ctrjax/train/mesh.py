"""Data parallelism with jax.jit + NamedSharding: batches split over a 1-D ``data`` mesh axis,
parameters and optimizer state replicated. The same code runs on 1 device, N devices or N hosts.

With ``config.embedding_sharding = "rows"`` every embedding table is row-sharded over the same axis
(``StateSharding``): device i holds rows [i V/N, (i+1) V/N) of each table, of its optimiser state
and of its regulariser weights, and 1/N of every batch; dense parameters stay replicated. XLA
partitions the lookups (docs/training.md, "Sharded embedding tables"): each device gathers the
rows it holds for the whole batch's ids, and the results are summed over devices.
"""
from __future__ import annotations

import dataclasses

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


EMBEDDING_SHARDINGS = ("replicated", "rows")


@dataclasses.dataclass(frozen=True)
class StateSharding:
  """Where each array of a train state lives on ``mesh``: the leaves of ``table_rows``' tables
  row-sharded over ``data``, everything else replicated. A leaf is a table's when its path has a
  key naming the table and its leading axis has the table's rows: the table in the params
  (``embedding/<table>``) and in optax's moments, its lazy optimiser state, its regulariser weights.
  Rows must divide by the mesh size (``Schema.padded_rows``). Empty ``table_rows``: all replicated."""
  mesh: Mesh
  table_rows: dict[str, int] = dataclasses.field(default_factory=dict)

  def of(self, tree):
    """The NamedSharding of every leaf of ``tree`` (arrays or shape structs)."""
    rows, replicated = NamedSharding(self.mesh, P("data")), NamedSharding(self.mesh, P())

    def sharding(path, leaf):
      keys = {k.key for k in path if isinstance(k, jax.tree_util.DictKey)}
      shape = np.shape(leaf)
      return rows if any(shape[:1] == (self.table_rows[t],) for t in keys & self.table_rows.keys()) else replicated
    return jax.tree_util.tree_map_with_path(sharding, tree)

  def constrain(self, tree):
    """``tree`` inside jit, constrained to ``of(tree)``."""
    return jax.lax.with_sharding_constraint(tree, self.of(tree))
