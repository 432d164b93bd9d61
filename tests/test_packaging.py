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


# ---------------------------------------------------------------- lean core, extras (issue 15)

HEAVY = ("matplotlib", "seaborn", "pandas", "typer", "rich", "sklearn", "mnist1d", "mlxtend",
         "pyarrow", "tensorboardX", "wandb", "mlflow", "sgdreg_cli", "sgdreg.plotting")


def _pyproject() -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_core_dependencies_are_the_numerical_stack_and_extras_cover_the_rest():
    proj = _pyproject()
    names = {d.split(">")[0].split("=")[0].split(";")[0].strip() for d in proj["dependencies"]}
    assert names <= {"jax", "equinox", "optax", "diffrax", "numpy", "jaxtyping", "tomli"}
    extras = proj["optional-dependencies"]
    assert {"cli", "plot", "data", "loggers", "parquet", "docs", "all", "test"} <= set(extras)
    for name in ("cli", "plot", "data", "loggers", "parquet"):
        assert set(extras[name]) <= set(extras["all"]) <= set(extras["test"]), name
    assert proj["scripts"]["sgdreg"] == "sgdreg_cli.entry:main"


def test_import_sgdreg_loads_no_plotting_pandas_cli_or_dataset_package():
    import subprocess

    code = ("import sys, sgdreg; "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "", f"`import sgdreg` imported {proc.stdout.strip()}"


def test_a_missing_extra_is_one_error_naming_it(monkeypatch, tmp_path):
    import importlib

    import pytest

    import sgdreg
    from sgdreg import _optional, datasets

    monkeypatch.setitem(sys.modules, "pandas", None)  # "not installed" for the import system
    with pytest.raises(sgdreg.MissingDependencyError, match=r"pip install 'sgdreg\[plot\]'"):
        sgdreg.load_traces(tmp_path)
    with pytest.raises(sgdreg.MissingDependencyError, match=r"to_dataframe needs .*'pandas'"):
        sgdreg.to_dataframe({})
    monkeypatch.delitem(sys.modules, "sgdreg.plotting", raising=False)
    with pytest.raises(sgdreg.MissingDependencyError, match=r"pandas: pip install 'sgdreg\[plot\]'"):
        importlib.import_module("sgdreg.plotting")
    for mod in ("sgdreg.correlation", "sgdreg.experiments.generalization"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
        with pytest.raises(sgdreg.MissingDependencyError, match=r"needs .*'pandas': .*'sgdreg\[plot\]'"):
            importlib.import_module(mod)
    monkeypatch.setitem(sys.modules, "mnist1d", None)
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(sgdreg.MissingDependencyError, match=r"'mnist1d'.*pip install 'sgdreg\[data\]'"):
        datasets._mnist1d.__wrapped__()
    (tmp_path / "broken_pkg").mkdir()  # an installed package whose own import fails is not masked
    (tmp_path / "broken_pkg" / "__init__.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match="no_such_dependency_xyz") as e:
        _optional.require("broken_pkg", "plot", "x")
    assert not isinstance(e.value, sgdreg.MissingDependencyError)


def test_console_script_without_the_cli_extra_says_which_extra_in_one_line(monkeypatch, capsys):
    import pytest
    from sgdreg_cli import entry

    monkeypatch.setitem(sys.modules, "typer", None)
    with pytest.raises(SystemExit) as e:
        entry.main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "typer" in err and "pip install 'sgdreg[cli]'" in err


# ---------------------------------------------------------------- self-contained documentation

def test_docstrings_cite_only_documents_the_project_ships():
    import re

    pattern = re.compile(r"SCIENCE\.md|DESIGN\.md|STYLE\.md|shared/")
    offenders = [f"{p.relative_to(ROOT)}:{i}" for folder in ("src", "cli", "experiments")
                 for p in (ROOT / folder).rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
    anchors = _anchors((ROOT / "docs" / "science.md").read_text())
    cited = {m for folder in ("src", "cli", "experiments", "tests") for p in (ROOT / folder).rglob("*.py")
             for m in re.findall(r"docs/science\.md#([a-z0-9-]+)", p.read_text())}
    assert cited and cited <= anchors, f"no such section in docs/science.md: {sorted(cited - anchors)}"


def _anchors(markdown: str) -> set[str]:
    """Heading ids as GitHub and mkdocs' toc both make them (lower case, spaces → '-')."""
    import re

    return {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#{2,3} (.+)$", markdown, re.M)}


def test_every_oracle_test_named_in_the_science_reference_exists():
    import re

    text = (ROOT / "docs" / "science.md").read_text()
    refs = set(re.findall(r"(tests/test_\w+\.py)::(test_\w+)", text))
    assert len(refs) > 80
    missing = [f"{f}::{t}" for f, t in sorted(refs)
               if not (ROOT / f).is_file() or not re.search(rf"^\s*def {t}\(", (ROOT / f).read_text(), re.M)]
    assert missing == []
