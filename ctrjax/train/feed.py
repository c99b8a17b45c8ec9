"""Where the training batches come from (``config.loader.placement``) and how many train steps one
dispatch runs (``config.steps_per_call``); docs/training.md, "Input placement and steps per call".

Placement:
  * ``host`` (the default): the grain loader gathers each batch from the memmapped columns and its
    threads transfer it to the device(s) (ctrjax/data/loader.py);
  * ``device``: the train split's columns, packed once (packing.py, id filter applied), live on the
    device(s), row-sharded over the mesh's ``data`` axis (each process uploads its devices' rows).
    Each epoch's permutation is drawn from (seed, epoch) by the loader's own ``EpochBatchSource``
    and sent once per epoch; every batch is gathered inside the jitted step. The batches and their
    order are the host loader's, so the run is the same (tests/test_scale_input.py);
  * ``auto``: device when the packed train split's share per device fits
    ``config.loader.device_memory_share`` of a device's memory (``memory_stats()["bytes_limit"]``),
    else host. CPU devices report no memory limit: host there.

Steps per call: K train steps run as one jitted ``lax.scan`` whose metrics come back stacked, one
entry per step (the loss trajectory, divergence check and epoch loss are the K = 1 ones). A call
never crosses an epoch end: an epoch's last ``steps_per_epoch % K`` steps, and the steps of a run
resumed off the K grid until K fit before the epoch end, run one per call (a second compiled
program). Logging and checkpoints happen after the call that reaches their step.

The data position of either feed is the number of steps taken, checkpointed as the grain iterator
state ``{"next_index": step}``, so a checkpoint resumes under either placement.
"""
from __future__ import annotations

import json
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from ctrjax.data import loader
from ctrjax.train import mesh as mesh_lib
from ctrjax.train import step as step_lib

PLACEMENTS = ("host", "device", "auto")
_CHUNK_ROWS = 1 << 18          # rows packed at a time while uploading (bounds the host copy)


def packed_row_bytes(layout) -> int:
  """Bytes of one packed row (int32 ids and float32 values)."""
  return 4 * sum(math.prod(shape) for spec in (layout.ints, layout.floats) for _, _, shape in spec)


def choose_placement(placement: str, split_bytes: int, devices: int, bytes_limit: int | None,
                     share: float) -> tuple[str, str]:
  """(``host`` or ``device``, the reason as a log line) for ``placement`` with a packed train split
  of ``split_bytes`` spread over ``devices`` devices of ``bytes_limit`` memory each (None: unknown)."""
  per_device = split_bytes / devices
  size = f"packed train split {split_bytes / 2**20:,.1f} MiB, {per_device / 2**20:,.1f} MiB per device"
  if placement != "auto":
    return placement, f"loader: placement {placement} ({size})"
  if not bytes_limit:
    return "host", f"loader: placement auto -> host (the devices report no memory limit; {size})"
  chosen = "device" if per_device <= share * bytes_limit else "host"
  return chosen, (f"loader: placement auto -> {chosen} ({size}: {per_device / bytes_limit:.1%} of "
                  f"{bytes_limit / 2**30:,.1f} GiB per device; config.loader.device_memory_share {share})")


def resolve_placement(setup) -> tuple[str, str]:
  """``choose_placement`` for ``setup``'s config, train split and mesh (for auto, the memory limit
  of this process's first device of the mesh, ``memory_stats()["bytes_limit"]``; CPU devices
  report none)."""
  cfg = setup.config.loader
  local = [d for d in setup.mesh.devices.flat if d.process_index == jax.process_index()]
  limit = (local[0].memory_stats() or {}).get("bytes_limit") if cfg.placement == "auto" else None
  return choose_placement(cfg.placement, setup.dataset.num_rows("train") * packed_row_bytes(setup.layout),
                          setup.mesh.size, limit, cfg.device_memory_share)


def call_size(step: int, steps_per_epoch: int, steps_per_call: int) -> int:
  """Steps of the call that starts at ``step``: K if they end by the epoch's end, else 1."""
  return steps_per_call if step % steps_per_epoch + steps_per_call <= steps_per_epoch else 1


class HostFeed:
  """Batches from the grain iterator (``Setup.batches``), already on the device(s) when taken."""

  def __init__(self, iterator, step: Callable, jit: Callable, steps_per_call: int):
    self.iterator = iterator                      # the checkpointed data position
    self.single = jit(step)
    self.multi = jit(step_lib.scan_steps(step)) if steps_per_call > 1 else None

  def steps(self, state, rng, n: int):
    """``n`` train steps from the current position: (state, metrics), each metric with a leading
    step axis when n > 1."""
    if n == 1:
      return self.single(state, next(self.iterator), rng)
    return self.multi(state, tuple(next(self.iterator) for _ in range(n)), rng)


class DeviceFeed:
  """Batches gathered on the device(s) from the packed train split, in the order of ``sources``
  (one per run; several: a stacked program's seeds, batches with a leading seed axis)."""

  def __init__(self, setup, sources: Sequence[loader.EpochBatchSource], step: Callable, jit: Callable,
               steps_per_call: int, stacked: bool):
    self.mesh, self.sources, self.stacked = setup.mesh, list(sources), stacked
    self.batch_size = sources[0].batch_size
    self.steps_per_epoch = sources[0].batches_per_epoch
    self.data = upload_train_split(setup)
    gather = (self._gather_on_one_device if stacked or self.mesh.size == 1 else self._gather_sharded)

    def steps(num_steps):
      def call(state, data, order, first, rng):
        def one(s, i):
          rows = jax.lax.dynamic_slice_in_dim(order, (first + i) * self.batch_size, self.batch_size, axis=-1)
          return step(s, gather(data, rows), rng)
        state, metrics = jax.lax.scan(one, state, jnp.arange(num_steps))
        return state, (metrics if num_steps > 1 else jax.tree.map(lambda x: x[0], metrics))
      return jit(call)

    self.calls = {n: steps(n) for n in {1, steps_per_call}}
    self._gather = jax.jit(lambda data, order, first: gather(data, jax.lax.dynamic_slice_in_dim(
        order, first * self.batch_size, self.batch_size, axis=-1)))
    self.position = 0
    self._epoch, self._order = None, None

  def _gather_sharded(self, data, rows):
    """The rows ``rows`` (replicated) of the row-sharded ``data`` -> the batch sharded over ``data``:
    each device picks the rows it holds (zeros elsewhere) and a reduce-scatter sums the parts, so
    device d ends with rows [d * B/D, (d+1) * B/D) of the batch, as the host loader places them."""
    def local(shard, rows):
      n = shard["ints"].shape[0]
      local_rows = rows - jax.lax.axis_index("data") * n
      held = (local_rows >= 0) & (local_rows < n)
      picked = jax.tree.map(lambda x: jnp.where(held[:, None], x[jnp.where(held, local_rows, 0)], 0), shard)
      return jax.tree.map(lambda x: jax.lax.psum_scatter(x, "data", scatter_dimension=0, tiled=True), picked)
    return jax.shard_map(local, mesh=self.mesh, in_specs=(P("data"), P()), out_specs=P("data"))(data, rows)

  @staticmethod
  def _gather_on_one_device(data, rows):
    """The rows ``rows`` of ``data`` on one device: the batch, or with rows int32[K, B] (a stacked
    program's seeds) each seed's batch, [K, B, ...]."""
    return jax.tree.map(lambda x: x[rows], data)

  def _epoch_order(self, epoch: int) -> jax.Array:
    """The permutation's first steps_per_epoch * B rows of ``epoch`` (each run's: [K, ...] when
    stacked), replicated; the loader draws it (``EpochBatchSource``), one transfer per epoch."""
    if self._epoch != epoch:
      span = self.steps_per_epoch * self.batch_size
      orders = np.stack([src.order(epoch)[:span].astype(np.int32) for src in self.sources])
      order = orders if self.stacked else orders[0]
      sharding = mesh_lib.replicated(self.mesh)
      self._order = jax.make_array_from_callback(order.shape, sharding, lambda index: order[index])
      self._epoch = epoch
    return self._order

  def batch(self, index: int) -> dict:
    """The packed batch of step ``index``, as the train step sees it (the host loader's
    ``Setup.to_device(source[index])``; a stacked program's: each seed's, stacked)."""
    epoch, first = divmod(index, self.steps_per_epoch)
    return self._gather(self.data, self._epoch_order(epoch), first)

  def steps(self, state, rng, n: int):
    """``n`` train steps from the current position (``HostFeed.steps``)."""
    epoch, first = divmod(self.position, self.steps_per_epoch)
    out = self.calls[n](state, self.data, self._epoch_order(epoch), first, rng)
    self.position += n
    return out

  # The grain iterator's checkpoint interface (grain.checkpoint.CheckpointHandler writes get_state's bytes).
  def get_state(self) -> bytes:
    return json.dumps({"next_index": self.position}, indent=4).encode()

  def set_state(self, state: bytes) -> None:
    self.position = int(json.loads(state)["next_index"])

  def start_prefetch(self) -> None:
    """Nothing to prefetch (called by grain's checkpoint handler after ``set_state``)."""

  @property
  def iterator(self):
    return self


def upload_train_split(setup) -> dict:
  """The train split packed (``setup.pack``: id filter, packing.py) as {"ints": int32[N', K],
  "floats": float32[N', M]} global arrays row-sharded over the mesh's ``data`` axis, N' = N rounded
  up to a multiple of the device count (the padding rows copy the last row and are never drawn).
  Each process reads and packs only its own devices' rows, ``_CHUNK_ROWS`` at a time."""
  n = setup.dataset.num_rows("train")
  padded = -(-n // setup.mesh.size) * setup.mesh.size
  per_device = padded // setup.mesh.size
  sharding = NamedSharding(setup.mesh, P("data"))
  shards: dict[str, list] = {"ints": [], "floats": []}
  for device, index in sharding.addressable_devices_indices_map((padded,)).items():
    start = index[0].start or 0
    parts = []
    for a in range(start, start + per_device, _CHUNK_ROWS):
      rows = np.minimum(np.arange(a, min(a + _CHUNK_ROWS, start + per_device)), n - 1)
      parts.append(setup.pack(loader.gather(setup.dataset, "train", rows, np.ones(len(rows), np.float32))))
    for key, arrays in shards.items():
      arrays.append(jax.device_put(np.concatenate([part[key] for part in parts]), device))
  return {key: jax.make_array_from_single_device_arrays((padded, arrays[0].shape[1]), sharding, arrays)
          for key, arrays in shards.items()}


def make_feed(setup, sources: Sequence[loader.EpochBatchSource], stacked: bool, host_batches: Callable):
  """The feed of a program over ``sources`` (one per run; ``stacked``: a seed group's), placed as
  ``config.loader.placement`` says, ``config.steps_per_call`` steps per call; ``host_batches()``
  gives the host placement's grain iterator. Prints the placement line on process 0 unless the
  feed is the default one (host, one step per call)."""
  config = setup.config
  k = config.steps_per_call
  if stacked:
    step, jit = step_lib.seed_train_step(setup.layout, setup.regularizer), lambda f: jax.jit(f, donate_argnums=0)
  else:
    step = step_lib.packed_train_step(setup.layout, setup.regularizer, setup.embeddings)
    jit = lambda f: step_lib.jit_train(f, setup.mesh, setup.state_sharding)    # noqa: E731
  placement, line = resolve_placement(setup)
  if jax.process_index() == 0 and (config.loader.placement != "host" or k > 1):   # else: as always
    print(line + (f"; {k} steps per call" if k > 1 else ""), flush=True)
  if placement == "device":
    return DeviceFeed(setup, sources, step, jit, k, stacked)
  return HostFeed(host_batches(), step, jit, k)
