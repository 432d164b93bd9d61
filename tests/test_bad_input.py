"""The bad-input table (issue 16): every command, every kind of bad input is clean.

Clean means: exit code 2, exactly one non-empty line on stderr that names the option (or file)
at fault, nothing on stdout, and the working directory's tree unchanged (each case runs in an
empty temporary cwd with ``--out`` inside it), all caught before any compilation, so the whole
table runs in seconds (``test_table_is_fast``).

Kinds: names (unknown values), ranges, finiteness (inf/nan), integer bounds (int32 step
counter, seeds < 2³²), duplicates in lists (two runs, one file), inconsistent options, file
kinds (missing, a directory, garbage) and the output location (an existing file, a path under
a file, an unwritable directory, a non-empty directory without --overwrite).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from sgdreg_cli.main import main

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False

GRID_OK = 'name = "t"\n[base]\ndataset = "digits"\noptimizer = "gd"\nsteps = 4\nlog_every = 2\n' \
          '[grid]\nlr = [0.1, 0.2]\n'


def _grid(body: str):
    return {"g.toml": 'name = "t"\n[base]\ndataset = "digits"\nsteps = 4\nlog_every = 2\n' + body}


# Files each case may need, made before the "before" snapshot: name → text (a name ending in
# "/" is a folder; "ro/" is made read-only).
FILE = {"f.txt": "not a directory\n"}
FULL = {"full/": None, "full/keep.txt": "an earlier result\n"}
RO = {"ro/": None}
RUNS = {"runs/": None}
CKPT = {"m.eqx": "not a checkpoint"}
BADJSON = {"bad.json": "{not json"}

# (command, args, files, needle): needle must appear in the one stderr line.
CASES = [
    # ---- compare ---------------------------------------------------------------------------
    ("compare", ["--optimizers", "gd,gd"], {}, "--optimizers"),
    ("compare", ["--optimizers", "gd,lbfgs"], {}, "--optimizers"),
    ("compare", ["--lr", "0.1,0.1"], {}, "--lr"),
    ("compare", ["--lr", "inf"], {}, "--lr"),
    ("compare", ["--lr", "nan"], {}, "--lr"),
    ("compare", ["--lr", "-1"], {}, "--lr"),
    ("compare", ["--steps", "3000000000"], {}, "--steps"),
    ("compare", ["--steps", "1e20"], {}, "--steps"),
    ("compare", ["--seed", "1e23"], {}, "--seed"),
    ("compare", ["--seed", "-1"], {}, "--seed"),
    ("compare", ["--seed", "4294967296"], {}, "--seed"),
    ("compare", ["--epochs", "inf"], {}, "--epochs"),
    ("compare", ["--epochs", "0"], {}, "--epochs"),
    ("compare", ["--model", "foo"], {}, "--model"),
    ("compare", ["--activation", "foo"], {}, "--activation"),
    ("compare", ["--dataset", "linreg", "--loss", "ce"], {}, "--dataset"),
    ("compare", ["--dataset", "nope"], {}, "--dataset"),
    ("compare", ["--hessian-n", "0"], {}, "--hessian-n"),
    ("compare", ["--hessian-n", "100000"], {}, "--hessian-n"),
    ("compare", ["--momentum", "1"], {}, "--momentum"),
    ("compare", ["--label-noise", "nan"], {}, "--label-noise"),
    ("compare", ["--no-curvature", "--hessian-every", "10"], {}, "--no-curvature"),
    ("compare", ["--n-train", "-1"], {}, "--n-train"),
    ("compare", ["--dtype", "float16"], {}, "--dtype"),
    ("compare", ["--width", "0"], {}, "--width"),
    ("compare", ["--batch-size", "0"], {}, "--batch-size"),
    ("compare", ["--out", "f.txt"], FILE, "--out"),
    ("compare", ["--out", "f.txt/sub"], FILE, "--out"),
    ("compare", ["--out", "ro/new"], RO, "--out"),
    ("compare", ["--out", "full"], FULL, "--out"),
    # ---- train -----------------------------------------------------------------------------
    ("train", ["--corruption", "0.5"], {}, "--corruption"),
    ("train", ["--corruption", "1.5", "--randomization", "label-corruption"], {}, "--corruption"),
    ("train", ["--corruption", "nan", "--randomization", "label-corruption"], {}, "--corruption"),
    ("train", ["--randomization", "blur"], {}, "--randomization"),
    ("train", ["--optimizer", "lbfgs"], {}, "--optimizer"),
    ("train", ["--lr", "inf"], {}, "--lr"),
    ("train", ["--lr", "nan"], {}, "--lr"),
    ("train", ["--epochs", "nan"], {}, "--epochs"),
    ("train", ["--epochs", "inf"], {}, "--epochs"),
    ("train", ["--steps", "0"], {}, "--steps"),
    ("train", ["--steps", "3000000000"], {}, "--steps"),
    ("train", ["--model", "foo"], {}, "--model"),
    ("train", ["--activation", "foo"], {}, "--activation"),
    ("train", ["--dataset", "linreg", "--loss", "ce"], {}, "--dataset"),
    ("train", ["--hessian-every", "7", "--log-every", "5"], {}, "--hessian-every"),
    ("train", ["--hessian-n", "0"], {}, "--hessian-n"),
    ("train", ["--egr", "-1"], {}, "--egr"),
    ("train", ["--egr", "inf"], {}, "--egr"),
    ("train", ["--svag-amplification", "0"], {}, "--svag-amplification"),
    ("train", ["--central-flow-eigs", "99"], {}, "--central-flow-eigs"),
    ("train", ["--batch-size", "5000"], {}, "--batch-size"),
    ("train", ["--out", "f.txt"], FILE, "--out"),
    ("train", ["--out", "f.txt/a/b"], FILE, "--out"),
    ("train", ["--out", "full"], FULL, "--out"),
    # ---- sweep -----------------------------------------------------------------------------
    ("sweep", ["g.toml", "--block", "-3", "--dry-run"], {"g.toml": GRID_OK}, "--block"),
    ("sweep", ["g.toml", "--block", "0"], {"g.toml": GRID_OK}, "--block"),
    ("sweep", ["g.toml", "--devices", "0"], {"g.toml": GRID_OK}, "--devices"),
    ("sweep", ["missing.toml"], {}, "missing.toml"),
    ("sweep", ["bad.toml"], {"bad.toml": "[base\nlr = "}, "bad.toml"),
    ("sweep", ["runs"], RUNS, "runs"),
    ("sweep", ["g.toml"], _grid("[grid]\nlr = [0.1, inf]\n"), "lr"),
    ("sweep", ["g.toml"], _grid("[grid]\nlr = [0.1, nan]\n"), "lr"),
    ("sweep", ["g.toml"], _grid("[grid]\nlr = [0.1, 0.1]\n"), "lr"),
    ("sweep", ["g.toml"], _grid("corruption = 0.5\n[grid]\nlr = [0.1]\n"), "corruption"),
    ("sweep", ["g.toml"], _grid("widht = 3\n"), "widht"),
    ("sweep", ["g.toml"], _grid("[grid]\nsteps = [3000000000]\n"), "steps"),
    ("sweep", ["g.toml"], _grid("[grid]\nmodel = [\"foo\"]\n"), "model"),
    ("sweep", ["g.toml"], _grid("[grid]\nseed = [-1]\n"), "seed"),
    ("sweep", ["g.toml", "--resume"], {"g.toml": GRID_OK}, "--resume"),
    ("sweep", ["g.toml", "--out", "full"], {"g.toml": GRID_OK, **FULL}, "--out"),
    ("sweep", ["g.toml", "--out", "f.txt"], {"g.toml": GRID_OK, **FILE}, "--out"),
    ("sweep", ["g.toml", "--out", "o", "--overwrite", "--resume"], {"g.toml": GRID_OK},
     "--overwrite"),
    # ---- randomize -------------------------------------------------------------------------
    ("randomize", ["--corruptions", "0,1.5"], {}, "--corruptions"),
    ("randomize", ["--corruptions", "0,0"], {}, "--corruptions"),
    ("randomize", ["--corruptions", "0,nan"], {}, "--corruptions"),
    ("randomize", ["--inputs", "blurred"], {}, "--inputs"),
    ("randomize", ["--seeds", "0,0"], {}, "--seeds"),
    ("randomize", ["--seeds", "-1"], {}, "--seeds"),
    ("randomize", ["--epochs", "0"], {}, "--epochs"),
    ("randomize", ["--optimizer", "lbfgs"], {}, "--optimizer"),
    ("randomize", ["--lr", "inf"], {}, "--lr"),
    ("randomize", ["--dataset", "linreg"], {}, "--dataset"),
    ("randomize", ["--out", "f.txt"], FILE, "--out"),
    ("randomize", ["--out", "full"], FULL, "--out"),
    # ---- expressivity ----------------------------------------------------------------------
    ("expressivity", ["--batch-size", "0"], {}, "--batch-size"),
    ("expressivity", ["--batch-size", "500"], {}, "--batch-size"),
    ("expressivity", ["--n", "0"], {}, "--n"),
    ("expressivity", ["--n", "100000"], {}, "--n"),
    ("expressivity", ["--multiples", "0"], {}, "--multiples"),
    ("expressivity", ["--multiples", "1,inf"], {}, "--multiples"),
    ("expressivity", ["--multiples", "1,1"], {}, "--multiples"),
    ("expressivity", ["--steps", "0"], {}, "--steps"),
    ("expressivity", ["--lr", "nan"], {}, "--lr"),
    ("expressivity", ["--optimizer", "lbfgs"], {}, "--optimizer"),
    ("expressivity", ["--dataset", "linreg"], {}, "--dataset"),
    ("expressivity", ["--out", "full"], FULL, "--out"),
    # ---- kernel ----------------------------------------------------------------------------
    ("kernel", ["--kernel", "poly"], {}, "--kernel"),
    ("kernel", ["--bandwidth", "-1"], {}, "--bandwidth"),
    ("kernel", ["--bandwidth", "nan"], {}, "--bandwidth"),
    ("kernel", ["--gd-n", "100"], {}, "--gd-n"),
    ("kernel", ["--gd-steps", "0"], {}, "--gd-steps"),
    ("kernel", ["--kernel", "linear"], {}, "--kernel"),
    ("kernel", ["--n-train", "0"], {}, "--n-train"),
    ("kernel", ["--preprocess", "foo"], {}, "--preprocess"),
    ("kernel", ["--dataset", "nope"], {}, "--dataset"),
    ("kernel", ["--out", "f.txt/sub"], FILE, "--out"),
    # ---- double-descent --------------------------------------------------------------------
    ("double-descent", ["--kind", "layer"], {}, "--kind"),
    ("double-descent", ["--sigma", "-1"], {}, "--sigma"),
    ("double-descent", ["--sigma", "nan"], {}, "--sigma"),
    ("double-descent", ["--kind", "width", "--noise", "1.2"], {}, "--noise"),
    ("double-descent", ["--kind", "epoch", "--noise", "0.1,0.2"], {}, "--noise"),
    ("double-descent", ["--features", "0"], {}, "--features"),
    ("double-descent", ["--features", "10,10"], {}, "--features"),
    ("double-descent", ["--kind", "width", "--widths", "0"], {}, "--widths"),
    ("double-descent", ["--seeds", "0,0"], {}, "--seeds"),
    ("double-descent", ["--epochs", "0"], {}, "--epochs"),
    ("double-descent", ["--kind", "width", "--lr", "inf"], {}, "--lr"),
    ("double-descent", ["--kind", "samples", "--features", "100,200"], {}, "--features"),
    ("double-descent", ["--out", "full"], FULL, "--out"),
    # ---- eos -------------------------------------------------------------------------------
    ("eos", ["--lr", "0.1,0.1"], {}, "--lr"),
    ("eos", ["--lr", "0.1,nan"], {}, "--lr"),
    ("eos", ["--lr", "-1"], {}, "--lr"),
    ("eos", ["--optimizer", "adam"], {}, "--optimizer"),
    ("eos", ["--sharpness-every", "7"], {}, "--sharpness-every"),
    ("eos", ["--settle-fraction", "0"], {}, "--settle-fraction"),
    ("eos", ["--flow-time", "inf"], {}, "--flow-time"),
    ("eos", ["--momentum", "1"], {}, "--momentum"),
    ("eos", ["--steps", "0"], {}, "--steps"),
    ("eos", ["--steps", "3000000000"], {}, "--steps"),
    ("eos", ["--dataset", "nope"], {}, "--dataset"),
    ("eos", ["--width", "0"], {}, "--width"),
    ("eos", ["--out", "f.txt"], FILE, "--out"),
    ("eos", ["--out", "full"], FULL, "--out"),
    # ---- igr -------------------------------------------------------------------------------
    ("igr", ["--lr", "-1"], {}, "--lr"),
    ("igr", ["--lr", "inf"], {}, "--lr"),
    ("igr", ["--lr", "0.1,0.1"], {}, "--lr"),
    ("igr", ["--time", "inf"], {}, "--time"),
    ("igr", ["--time", "0"], {}, "--time"),
    ("igr", ["--lr", "0.3", "--time", "1"], {}, "--time"),
    ("igr", ["--n-log", "0"], {}, "--n-log"),
    ("igr", ["--egr-lr", "nan"], {}, "--egr-lr"),
    ("igr", ["--two-param", "--sweep"], {}, "--two-param"),
    ("igr", ["--seeds", "0,1"], {}, "--seeds"),
    ("igr", ["--sweep", "--seeds", "0,0"], {}, "--seeds"),
    ("igr", ["--sweep", "--width", "0"], {}, "--width"),
    ("igr", ["--width", "8,16"], {}, "--width"),
    ("igr", ["--model", "foo"], {}, "--model"),
    ("igr", ["--activation", "foo"], {}, "--activation"),
    ("igr", ["--two-param", "--h-small", "0.05", "--h-moderate", "0.01"], {}, "--h-small"),
    ("igr", ["--out", "full"], FULL, "--out"),
    # ---- hessian ---------------------------------------------------------------------------
    ("hessian", ["missing.eqx"], {}, "missing.eqx"),
    ("hessian", ["m.eqx", "--sigma", "-1"], CKPT, "--sigma"),
    ("hessian", ["m.eqx", "--sigma", "nan"], CKPT, "--sigma"),
    ("hessian", ["m.eqx", "--probes", "1"], CKPT, "--probes"),
    ("hessian", ["m.eqx", "--top-k", "0"], CKPT, "--top-k"),
    ("hessian", ["m.eqx", "--lambda-min-tol", "nan"], CKPT, "--lambda-min-tol"),
    ("hessian", ["m.eqx", "--lambda-min-steps", "-1"], CKPT, "--lambda-min-steps"),
    ("hessian", ["m.eqx", "--hessian-n", "0"], CKPT, "--hessian-n"),
    ("hessian", ["m.eqx", "--slq-starts", "0"], CKPT, "--slq-starts"),
    ("hessian", ["m.eqx", "--seed", "-1"], CKPT, "--seed"),
    ("hessian", ["m.eqx", "--out", "f.txt"], {**CKPT, **FILE}, "--out"),
    ("hessian", ["m.eqx", "--out", "full"], {**CKPT, **FULL}, "--out"),
    # ---- correlate -------------------------------------------------------------------------
    ("correlate", ["runs", "--level", "2"], RUNS, "--level"),
    ("correlate", ["runs", "--level", "nan"], RUNS, "--level"),
    ("correlate", ["runs", "--resamples", "-5"], RUNS, "--resamples"),
    ("correlate", ["runs", "--gap", "nope"], RUNS, "--gap"),
    ("correlate", ["runs", "--target-loss", "-1"], RUNS, "--target-loss"),
    ("correlate", ["runs", "--target-loss", "inf"], RUNS, "--target-loss"),
    ("correlate", ["runs", "--top", "0"], RUNS, "--top"),
    ("correlate", ["missing"], {}, "missing"),
    ("correlate", ["f.txt"], FILE, "f.txt"),
    # ---- figures ---------------------------------------------------------------------------
    ("figures", ["--data", "nope"], {}, "--data"),
    ("figures", ["--only", "nope"], RUNS, "--only"),
    ("figures", ["--only", "eos,eos"], RUNS, "--only"),
    ("figures", ["--data", "runs", "--out", "f.txt"], {**RUNS, **FILE}, "--out"),
    # ---- trace show / validate / export ----------------------------------------------------
    ("trace", ["show", "missing.json"], {}, "missing.json"),
    ("trace", ["validate", "missing.json"], {}, "missing.json"),
    ("trace", ["show", "bad.json"], BADJSON, "bad.json"),
    ("trace", ["validate", "bad.json"], BADJSON, "bad.json"),
    ("trace", ["export", "missing.json", "--out", "x.csv"], {}, "missing.json"),
    ("trace", ["export", "bad.json", "--out", "runs"], {**BADJSON, **RUNS}, "--out"),
    ("trace", ["export", "bad.json", "--out", "f.txt/x.csv"], {**BADJSON, **FILE}, "--out"),
    ("trace", ["export", "bad.json", "--out", "ro/x.csv"], {**BADJSON, **RO}, "--out"),
    # ---- datasets --------------------------------------------------------------------------
    ("datasets", ["--bogus"], {}, "--bogus"),
    ("datasets", ["extra"], {}, "extra"),
]

# commands whose default output is a fresh sgdreg-runs/<cmd>-<time>: every case gets --out o
# (inside the empty cwd) unless it names its own
TAKES_OUT = {"compare", "train", "sweep", "randomize", "expressivity", "kernel",
             "double-descent", "eos", "igr", "hessian"}


def _case_id(values) -> str:
    return f"{values[0]}:{' '.join(values[1])}"[:80]


@pytest.fixture(scope="module", autouse=True)
def _one_click_command():
    """``main`` builds the click command from the Typer app on every call (≈ 0.25 s of type-hint
    introspection); build it once for the table."""
    import typer.main as tm

    orig, cache = tm.get_command, {}

    def cached(app):
        if id(app) not in cache:
            cache[id(app)] = orig(app)
        return cache[id(app)]

    mp = pytest.MonkeyPatch()
    mp.setattr(tm, "get_command", cached)
    yield
    mp.undo()


def _snapshot(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            digest = None
            if p.is_file():
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
            out[rel] = (p.is_dir(), st.st_size, st.st_mtime_ns, st.st_mode, digest)
    return out


def _make(root: Path, files: dict) -> None:
    for name, text in files.items():
        p = root / name.rstrip("/")
        if name.endswith("/"):
            p.mkdir(parents=True, exist_ok=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
    if "ro/" in files:
        (root / "ro").chmod(0o555)


_WALL: list[float] = []


@pytest.mark.parametrize("command, args, files, needle", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input_is_clean(command, args, files, needle, tmp_path, monkeypatch, capsys):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    _make(cwd, files)
    monkeypatch.chdir(cwd)
    if "ro/" in files and ROOT:  # root writes anywhere: let os.access say what a user would see
        real = os.access
        ro = (cwd / "ro").resolve()

        def access(path, mode, *a, **k):
            p = Path(path).resolve()
            if mode & os.W_OK and (p == ro or ro in p.parents):
                return False
            return real(path, mode, *a, **k)

        monkeypatch.setattr(os, "access", access)
    argv = [command, *args]
    if command in TAKES_OUT and "--out" not in args and "--resume" not in args:
        argv += ["--out", "o"]
    before = _snapshot(cwd)
    capsys.readouterr()
    t = time.perf_counter()
    try:
        code = main(argv)
    finally:
        _WALL.append(time.perf_counter() - t)
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (argv, err)
    assert out == "", (argv, out)
    assert len(lines) == 1 and err.strip() == lines[0], (argv, err)
    assert needle in lines[0], (argv, lines[0])
    assert "Traceback" not in err
    assert _snapshot(cwd) == before, argv
    if (cwd / "ro").exists():
        (cwd / "ro").chmod(0o755)  # let pytest clean up


def test_table_covers_every_command():
    from collections import Counter

    by_command = Counter(c[0] for c in CASES)
    assert set(by_command) == {"compare", "train", "sweep", "randomize", "expressivity", "kernel",
                               "double-descent", "eos", "igr", "hessian", "correlate", "figures",
                               "trace", "datasets"}
    assert sum(by_command.values()) >= 100


def test_table_is_fast():
    """The table fails before data loading or compilation: well under 40 s in all."""
    if len(_WALL) < len(CASES) // 2:
        pytest.skip("run with the whole table")
    assert sum(_WALL) < 40, sum(_WALL)


# ---- unique, bounded run ids and the output policy (no compilation) ---------------------------

def test_run_ids_are_exact_and_bounded():
    from sgdreg.config import RunConfig
    from sgdreg.sweep.plan import RUN_LABEL_MAX, sweep_run_id
    from sgdreg.training import RUN_ID_MAX, run_id

    assert run_id(RunConfig(lr=0.1)) == "gd_lr0.1_s0"  # readable names are unchanged
    assert run_id(RunConfig(lr=0.1000001)) == "gd_lr0.1000001_s0"  # `:g` would say lr0.1
    assert run_id(RunConfig(optimizer="sgd", lr=1e-5, label_noise=0.1)) == "sgd_lr1e-05_b32_ln0.1_s0"
    long_a, long_b = ({"dataset": "x" * 250 + tail} for tail in "ab")
    ids = {sweep_run_id(7, long_a), sweep_run_id(7, long_b)}
    assert len(ids) == 2 and all(len(i) <= len("r0007_") + RUN_LABEL_MAX for i in ids)
    assert sweep_run_id(7, {"lr": 0.1}) == "r0007_lr0.1"
    from sgdreg.training import bounded_id

    cut = bounded_id("y" * 300, {"a": 1})
    assert len(cut) == RUN_ID_MAX and cut != bounded_id("y" * 300, {"a": 2})


def test_overwrite_removes_only_traces(tmp_path):
    import json

    from sgdreg_cli.app import UsageProblem, make_output, output_dir

    from sgdreg.trace import SCHEMA

    dest = tmp_path / "runs"
    (dest / "traces").mkdir(parents=True)
    (dest / "old_run.json").write_text(json.dumps({"schema": SCHEMA, "run_id": "old"}, indent=1))
    (dest / "traces" / "t.json").write_text(json.dumps({"schema": SCHEMA}))
    (dest / "notes.json").write_text(json.dumps({"mine": 1}))
    (dest / "notes.txt").write_text("keep")
    with pytest.raises(UsageProblem, match="not empty; pass --overwrite"):
        output_dir(dest, "compare")
    with pytest.raises(UsageProblem, match="--overwrite or --resume"):
        output_dir(dest, "sweep", resume=False)
    assert output_dir(dest, "compare", overwrite=True) == dest
    from sgdreg import locking

    try:
        make_output(dest, overwrite=True, command="test")  # takes the directory's lock
        assert (dest / locking.LOCK_NAME).is_file()
    finally:
        locking.release_held()
    assert sorted(p.name for p in dest.rglob("*")) == ["notes.json", "notes.txt", "traces"]
    fresh = output_dir(None, "compare")  # the default is always a new folder
    assert not fresh.exists() and fresh.parent.name == "sgdreg-runs"
