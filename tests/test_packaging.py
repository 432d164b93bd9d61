"""The wheel ships every package: pyproject's explicit package list names each folder under
src/sgdreg and cli/ that holds an __init__.py (a missing one installs fine and fails at import)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = {"sgdreg." + ".".join(p.parent.relative_to(ROOT / "src/sgdreg").parts)
             for p in (ROOT / "src/sgdreg").rglob("__init__.py")}
    found = {f.rstrip(".") for f in found} | {"sgdreg_cli"}
    assert found <= listed, f"missing from [tool.setuptools] packages: {sorted(found - listed)}"
