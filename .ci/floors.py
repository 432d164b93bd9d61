"""The dependency floors for CI's third stage (.ci/run), read from pyproject.toml.

    python3 .ci/floors.py            one pinned requirement per line: each core dependency at
                                     its lower bound (">=" read as "=="), and jaxlib == jax
    python .ci/floors.py --check     exit 1 unless the running environment has exactly those
    python3 .ci/floors.py --tests    the quick part of the suite that runs at the floors
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the quick part of the suite at the floors (about a third of the CPU time of these files in
# full): the update rules, the flows (closed form; the modified flow's adaptive solve), curvature
# against dense Hessians, the SDE/SVAG, the central flow's solver and derivatives, a 64-run sweep
# bit for bit on 1 and 4 devices (shard_map), traces, checkpoints, the public API, packaging
QUICK = ["tests/test_update_rules.py",
         "tests/test_training.py::test_flow_matches_closed_form_on_quadratic",
         "tests/test_training.py::test_every_optimizer_decreases_the_loss[modified-flow]",
         "tests/test_training.py::test_sgd_decomposition_identity_on_logged_values",
         "tests/test_curvature.py", "tests/test_sde.py",
         "tests/test_central_flow.py::test_sdcp_solves_random_instances_like_an_independent_solver",
         "tests/test_central_flow.py::test_pair_gradients_and_grad_sharpness_match_finite_differences",
         "tests/test_central_flow.py::test_top_eigenpairs_match_dense_eigh_from_a_cold_start",
         "tests/test_sweep.py::test_64_run_sweep_is_identical_on_1_and_4_devices",
         "tests/test_sweep.py::test_sweep_run_gives_the_trace_of_train_alone",
         "tests/test_trace.py", "tests/test_api.py", "tests/test_packaging.py"]


def floors() -> list[str]:
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    pins = []
    for req in re.findall(r'^\s*"([^"]+)"', block, re.M):
        name, rest = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", req).groups()
        spec, _, marker = rest.partition(";")
        low = re.search(r">=\s*([0-9][^,\s]*)", spec)
        if low is None:
            raise SystemExit(f"{req!r} in pyproject.toml has no lower bound")
        pins.append(f"{name}=={low.group(1)}" + (f"; {marker.strip()}" if marker else ""))
        if name == "jax":
            pins.append(f"jaxlib=={low.group(1)}")
    return pins


def check() -> int:
    from importlib import metadata

    try:
        from packaging.markers import Marker
        from packaging.version import Version
    except ImportError:  # pragma: no cover - pip's vendored copy
        from pip._vendor.packaging.markers import Marker
        from pip._vendor.packaging.version import Version

    bad = []
    for pin in floors():
        req, _, marker = pin.partition("; ")
        if marker and not Marker(marker).evaluate():
            continue
        name, want = req.split("==")
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = None
        if have is None or Version(have) != Version(want):
            bad.append(f"{name} {have} (floor {want})")
    if bad:
        print("not at the floors: " + ", ".join(bad), file=sys.stderr)
        return 1
    print("at the floors: " + ", ".join(floors()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        sys.exit(check())
    print("\n".join(QUICK if sys.argv[1:] == ["--tests"] else floors()))
