"""Figures from stored results only (never re-training): seaborn, one style, PNG + SVG.

``common`` holds the style and the writer; ``compare`` the figures of ``sgdreg compare`` and
``sgdreg hessian``; one module per reproduced paper (``zhang``, ``kernel``, ``double_descent``,
``eos``, ``generalization``, ``igr``) renders that experiment's figure from
``<results_dir>/<experiment>.json`` (``sgdreg.results``). The gallery is ``sgdreg.figures``.
The numerical core never imports this package (it imports matplotlib and seaborn).
"""

from .._optional import missing as _missing
from ..errors import MissingDependencyError as _MissingDependencyError

if _absent := _missing(("matplotlib", "seaborn", "pandas")):
    raise _MissingDependencyError(f"sgdreg.plotting needs {', '.join(_absent)}: "
                                  "pip install 'sgdreg[plot]'")
