"""Multi-process JAX (issue 14, item 4): two processes on this machine under
``jax.distributed`` (coordinator on localhost at a free port, CPU collectives over gloo,
``jax_cpu_collectives_implementation`` in jax 0.10), one CPU device each, so the global mesh
spans both processes and every cross-device value goes through a cross-process collective.

1. One sweep sharded over the two processes' devices (``run_sweep(distributed={...})``: the run
   axis split between the processes, results gathered with ``process_allgather``, process 0
   writing) gives the traces of a single-process sweep bit for bit.
2. Full-batch curvature (``curvature.hessian_matvec`` → Hutchinson tr H and Lanczos λ_max) on
   data held half by each process (a global array, ``make_array_from_process_local_data``)
   equals the single-process values to 1e-12 relative (float64; only the summation order of the
   cross-process reduction differs).

Both scenarios run in one launch of the two processes (start-up and compilation dominate: ~20 s
on an idle 2-core box, ~50 s on a loaded one), hence ``slow``.
"""

import json
import os
import socket
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from sgdreg import curvature as cv
from sgdreg import sweep

pytestmark = pytest.mark.slow

GRID = {"name": "dist", "base": {"dataset": "linreg", "model": "linear", "loss": "mse",
                                 "optimizer": "sgd", "batch_size": 8, "steps": 8,
                                 "log_every": 4, "dtype": "float64"},
        "grid": {"seed": [0, 1], "lr": [0.05, 0.1]}}
BLOCK = 2  # 4 runs: one block per device on 2 devices, two blocks on 1 device

CHILD = r"""
import json, sys
i, port, out, grid = int(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
import jax
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
import numpy as np, equinox as eqx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from sgdreg import sweep
import tests_distributed_problem as prob

res = sweep.run_sweep(grid, out, block=int(sys.argv[5]), distributed={
    "coordinator_address": f"127.0.0.1:{port}", "num_processes": 2, "process_id": i,
    "initialization_timeout": 120})
assert jax.process_count() == 2 and len(jax.devices()) == 2 and len(jax.local_devices()) == 1

x, y, params = prob.data()
n = x.shape[0]
mesh = Mesh(np.array(jax.devices()), ("data",))
rows, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
mine = slice(i * n // 2, (i + 1) * n // 2)  # this process holds half of the examples
xs = jax.make_array_from_process_local_data(rows, x[mine], x.shape)
ys = jax.make_array_from_process_local_data(rows, y[mine], y.shape)
ps = jax.tree.map(lambda a: jax.make_array_from_callback(a.shape, rep, lambda idx: a[idx]),
                  params)
assert not xs.is_fully_addressable
tr, lam = prob.probe(ps, xs, ys)
print("RESULT " + json.dumps({"process": i, "trace": float(tr), "lambda_max": float(lam),
                              "metrics": [t["metrics"] for t in res.traces],
                              "index_process_count": res.index["devices"]["process_count"]}))
jax.distributed.shutdown()
"""

PROBLEM = r'''
"""The curvature problem of tests/test_distributed.py (imported by the test and its children)."""
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from sgdreg import curvature as cv


def data():
    rng = np.random.default_rng(0)
    n, d, h, c = 64, 5, 6, 3
    x = rng.normal(size=(n, d))
    y = rng.integers(0, c, n).astype(np.int32)
    params = {"w1": rng.normal(size=(d, h)) / 2, "b1": rng.normal(size=h) / 4,
              "w2": rng.normal(size=(h, c)) / 2}
    return x, y, params


def example_loss(p, xi, yi):
    """Cross-entropy of a tanh MLP on one example."""
    out = jnp.tanh(xi @ p["w1"] + p["b1"]) @ p["w2"]
    return jax.nn.logsumexp(out) - out[yi]


@eqx.filter_jit
def probe(p, x, y):
    """Full-batch Hutchinson tr H (16 Rademacher probes) and Lanczos λ_max (30 steps)."""
    hv = cv.hessian_matvec(example_loss, p, x, y, chunk_size=x.shape[0])
    key = jax.random.key(0)
    return (cv.hutchinson(hv, hv.dim, key, 16).estimate,
            cv.lanczos_eigs(hv, hv.dim, 1, 30, key=key).eigenvalues[0])
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    (root / "tests_distributed_problem.py").write_text(PROBLEM)
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "SGDREG_NO_CACHE": "1",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(i), str(port),
                               str(root / "sweep"), json.dumps(GRID), str(BLOCK)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env, cwd=root) for i in (0, 1)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=300))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
        results.append(json.loads(line[len("RESULT "):]))
    sys.path.insert(0, str(root))
    try:
        import tests_distributed_problem as prob
    finally:
        sys.path.remove(str(root))
    return root, results, prob


def test_a_sweep_over_two_processes_equals_one_process(two_processes, tmp_path):
    root, results, _ = two_processes
    ref = sweep.run_sweep(GRID, tmp_path / "one", devices=1, block=BLOCK)
    expect = [t["metrics"] for t in ref.traces]
    assert [r["process"] for r in results] == [0, 1]
    for r in results:  # both processes return every run's trace
        assert r["index_process_count"] == 2
        assert r["metrics"] == expect  # bit for bit
    index = json.loads((root / "sweep" / "sweep.json").read_text())  # written by process 0
    assert index["status"] == "completed" and index["devices"]["used"] == 2
    assert index["devices"]["process_count"] == 2
    for run, m in zip(index["runs"], expect):
        assert json.loads((root / "sweep" / run["trace"]).read_text())["metrics"] == m


def test_curvature_on_data_split_between_two_processes_equals_one_process(two_processes):
    _, results, prob = two_processes
    x, y, params = prob.data()
    tr, lam = prob.probe(params, jnp.asarray(x), jnp.asarray(y))
    # the single-process λ_max is right: the dense Hessian's top eigenvalue
    hess = np.asarray(cv.dense_hessian(prob.example_loss, params, jnp.asarray(x),
                                       jnp.asarray(y)))
    assert float(lam) == pytest.approx(np.linalg.eigvalsh(hess)[-1], rel=1e-10)
    for r in results:
        assert r["trace"] == pytest.approx(float(tr), rel=1e-12, abs=0)
        assert r["lambda_max"] == pytest.approx(float(lam), rel=1e-12, abs=0)
    assert results[0]["trace"] == results[1]["trace"]  # one value, every process
    assert results[0]["lambda_max"] == results[1]["lambda_max"]
