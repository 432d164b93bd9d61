"""Test setup: float64 available for exact oracles, several CPU devices for sharding tests.

The library always passes explicit dtypes, so float32 code paths stay float32 here.
"""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_num_cpu_devices", 4)
