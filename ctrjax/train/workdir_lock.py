"""One process per workdir: ``<workdir>/.lock``, an ``fcntl.flock`` the OS drops when its process
dies (a killed run leaves no stale lock).

A run holds it exclusively while it trains (``training``: ``train_and_evaluate``, and every seed
workdir of a ``train_seeds`` group) and writes its pid and host into the file, so a second run in
the same workdir is refused at once naming the first. Reading a finished run's best checkpoint
(``reading``: ``load_best``, ``evaluate_workdir``) holds it shared, so evaluations may run together
but not while a run trains there and replaces the checkpoints being read. In a multi-process run
process 0 holds it for all processes.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import socket
from typing import Iterator, Sequence

import jax

from ctrjax.errors import WorkdirBusy

LOCK_FILE = ".lock"


def _acquire(workdir: pathlib.Path, operation: int, doing: str) -> int:
  """The open lock file of ``workdir``, locked with ``operation`` (LOCK_EX or LOCK_SH), or
  WorkdirBusy naming the process that holds it."""
  workdir.mkdir(parents=True, exist_ok=True)
  path = workdir / LOCK_FILE
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, operation | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = path.read_text().strip() or "a run that has not written its pid yet"
    if operation == fcntl.LOCK_EX and _can_lock(fd, fcntl.LOCK_SH):
      holder = "an evaluation of its best checkpoint"
    os.close(fd)
    raise WorkdirBusy(f"{workdir} is in use by {holder} (lock {path}); {doing} after it ends, or "
                      f"stop it") from None
  return fd


def _can_lock(fd: int, operation: int) -> bool:
  try:
    fcntl.flock(fd, operation | fcntl.LOCK_NB)
  except BlockingIOError:
    return False
  return True


@contextlib.contextmanager
def training(workdirs: Sequence[str | os.PathLike]) -> Iterator[None]:
  """Holds every workdir's lock exclusively (all or none), its file naming this process."""
  with contextlib.ExitStack() as stack:
    if jax.process_index() == 0:
      for workdir in workdirs:
        fd = _acquire(pathlib.Path(workdir), fcntl.LOCK_EX, "rerun")
        stack.callback(os.close, fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    yield


@contextlib.contextmanager
def reading(workdir: str | os.PathLike) -> Iterator[None]:
  """Holds ``workdir``'s lock shared: no run trains there meanwhile."""
  with contextlib.ExitStack() as stack:
    if jax.process_index() == 0:
      stack.callback(os.close, _acquire(pathlib.Path(workdir), fcntl.LOCK_SH, "evaluate"))
    yield
