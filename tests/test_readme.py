"""The README's "Your own model" example runs as written, so it can never rot."""

import re
from pathlib import Path

import jax
import pytest

import sgdreg

README = Path(__file__).resolve().parents[1] / "README.md"


def section_code(heading: str) -> str:
    """The first fenced ```python block under the ``## heading`` of the README."""
    text = README.read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    block = re.search(r"```python\n(.*?)```", text[start:end if end > 0 else None], re.S)
    assert block, f"no python block in README section {heading!r}"
    return block.group(1)


@pytest.fixture
def x32():
    """JAX's default 32-bit mode, as a reader runs the example (the suite runs in 64-bit)."""
    jax.config.update("jax_enable_x64", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", True)


@pytest.mark.slow  # ~1-2 min: CI's second stage (pytest -m slow)
def test_your_own_model_example_runs_and_writes_traces(tmp_path, monkeypatch, x32, capsys):
    code = section_code("Your own model")
    assert 15 <= len(code.strip().splitlines()) <= 40
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, "README.md (Your own model)", "exec"), namespace)
    df = namespace["df"]
    assert set(df["run_id"]) == {"gd", "sgd", "adamw", "flow"}
    traces = {p.stem: sgdreg.load_trace(p) for p in (tmp_path / "runs").glob("*.json")}
    assert set(traces) == {"gd", "sgd", "adamw", "flow"}
    for name, doc in traces.items():
        assert doc["status"] == "completed", (name, doc["status_detail"])
        m = doc["metrics"]
        assert m["step"][-1] == 100 and m["lambda_max"][-1] is not None, name
        assert m["train_loss"][0] == traces["gd"]["metrics"]["train_loss"][0]  # same θ0
        assert doc["provenance"]["model"]["class"].endswith("CNN")
        assert "inference mode" in doc["probes"]["curvature"]["hessian"]
    lam = namespace["lam"]
    assert sorted(set(lam["step"])) == [0, 50, 100] and len(lam) == 12
    assert "run_id" in capsys.readouterr().out
