"""Test setup: 4 simulated CPU devices, the persistent compile cache, and access to ../shared data."""
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
jax.config.update("jax_compilation_cache_dir", str(REPO / ".jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

SHARED = pathlib.Path(os.environ.get("CTRJAX_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> pathlib.Path:
  """Path under ../shared; skips the test when absent, fails instead under CTRJAX_REQUIRE_SHARED=1 (CI)."""
  p = SHARED.joinpath(*parts)
  if not p.exists():
    msg = f"shared data {p} is absent (set CTRJAX_SHARED to the shared/ folder)"
    if os.environ.get("CTRJAX_REQUIRE_SHARED") == "1":
      pytest.fail(msg + " and CTRJAX_REQUIRE_SHARED=1")
    pytest.skip(msg)
  return p
