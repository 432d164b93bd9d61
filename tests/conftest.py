"""Test setup: float64 available for exact oracles, several CPU devices for sharding tests.

The library always passes explicit dtypes, so float32 code paths stay float32 here.
"""

import os

import jax

# in-process CLI calls must not write JAX's compile cache into the user's ~/.cache (the cache
# test runs the CLI in subprocesses with its own XDG_CACHE_HOME)
os.environ["SGDREG_NO_CACHE"] = "1"
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_num_cpu_devices", 4)
