"""sgdreg: implicit regularization in SGD dynamics, measured (JAX/Equinox).

Pipeline: data → model → dynamics → probes → trace → analysis/figures.
"""

__version__ = "0.1.0"
