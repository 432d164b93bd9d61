"""Mutation testing of sgdreg's formulas: plant small wrong formulas, check the tests fail.

A small AST-based harness (mutmut 3 and cosmic-ray mutate every line and collect coverage over
the whole suite first: hours under JAX on this machine). It mutates only the formula-bearing
functions listed in ``tests/mutation/targets.toml``, each module against the fast test
selection listed there, and runs every mutant in a COPY of the tree (``--workdir``, default
/tmp/sgdreg-mut), never in the checkout.

Operators (one mutant per site and replacement):
  binop      a + b ↔ a − b, a * b ↔ a / b, a ** b → a * b (also in ``x op= y``)
  drop       a ± b → a, a ± b → ±b (one operand of a +/− term dropped)
  const      numeric literal c → c + 1 (0.5 → 1, 2 → 1/3; bools and signature defaults untouched)
  compare    < ↔ <=, > ↔ >=, == ↔ !=
  neg        −x → x
  reduce     sum ↔ mean (jnp./np. functions and methods)
  sqrt       sqrt(x) → x
Strings, f-strings, ``raise`` statements, decorators, annotations and default arguments are not
mutated.

Speed: one parent imports JAX, equinox, optax, diffrax, pandas and pytest once (no JAX
computation, so no XLA thread exists yet) and forks one child per mutant that runs
``pytest -x`` on the selection; sgdreg itself is imported fresh in each child from the copy. A
persistent XLA compile cache in the work directory is shared by the children (keyed on the
compiled program, so a mutant that changes a program compiles afresh). A child past
``--timeout`` seconds is killed and counted as killed, reported apart as a timeout.

Usage (from the repository root):
  python tests/mutation/mutate.py curvature            # one module, results labelled "before"
  python tests/mutation/mutate.py --all --label after  # every module in targets.toml
  python tests/mutation/mutate.py kernels --list       # print the mutants, run nothing
  python tests/mutation/mutate.py --planted            # the mutations planted in issue 17
  python tests/mutation/mutate.py --verify             # killing tests pass unmutated?
  python tests/mutation/mutate.py --scores             # rewrite the table in SCORES.md only
Results: tests/mutation/results/<module>.json (per label), table in tests/mutation/SCORES.md.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import tomllib

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = HERE / "results"
SCORES = HERE / "SCORES.md"
BEGIN, END = "<!-- scores:begin -->", "<!-- scores:end -->"


@dataclass
class Mutant:
    key: str          # stable id: function|operator|original→replacement|occurrence
    function: str
    line: int
    operator: str
    original: str
    replacement: str
    span: tuple[int, int, int, int]  # lineno, col (bytes), end_lineno, end_col (bytes)


# ----------------------------------------------------------------------------- mutant generation

_BINOP_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.Pow: ast.Mult}
_CMP_SWAP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
             ast.NotEq: ast.Eq}
_REDUCE_SWAP = {"sum": "mean", "mean": "sum"}
_SQRT = {"sqrt"}
_NUMPY_NAMES = {"jnp", "np", "numpy", "math"}


def _const_replacement(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if v == 0.5:
        return 1.0
    if v == 2:
        return ast.BinOp(ast.Constant(1), ast.Div(), ast.Constant(3))
    return v + 1


def _skipped_nodes(fn: ast.AST) -> set[int]:
    """ids of nodes never mutated: f-strings, raise statements, annotations, nested defaults."""
    skip: set[int] = set()

    def mark(node):
        for sub in ast.walk(node):
            skip.add(id(sub))

    for node in ast.walk(fn):
        if isinstance(node, (ast.JoinedStr, ast.Raise)):
            mark(node)
        elif isinstance(node, ast.AnnAssign) and node.annotation is not None:
            mark(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for d in [*node.args.defaults, *[d for d in node.args.kw_defaults if d is not None]]:
                mark(d)
            if not isinstance(node, ast.Lambda):
                for dec in node.decorator_list:
                    mark(dec)
                if node.returns is not None:
                    mark(node.returns)
            for a in [*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs]:
                if a.annotation is not None:
                    mark(a.annotation)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            mark(node)  # docstrings and bare strings
    return skip


def _span(node) -> tuple[int, int, int, int]:
    return (node.lineno, node.col_offset, node.end_lineno, node.end_col_offset)


def _segment(lines: list[bytes], span) -> str:
    l0, c0, l1, c1 = span
    if l0 == l1:
        return lines[l0 - 1][c0:c1].decode()
    parts = [lines[l0 - 1][c0:]] + lines[l0:l1 - 1] + [lines[l1 - 1][:c1]]
    return b"".join(parts).decode()


def _mutations_of(node, lines):
    """(operator, replacement source, span) for one node."""
    out = []
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOP_SWAP:
        new = copy.deepcopy(node)
        new.op = _BINOP_SWAP[type(node.op)]()
        out.append(("binop", f"({ast.unparse(new)})", _span(node)))
        if isinstance(node.op, (ast.Add, ast.Sub)):
            left = _segment(lines, _span(node.left))
            right = _segment(lines, _span(node.right))
            out.append(("drop", f"({left})", _span(node)))
            out.append(("drop", f"({right})" if isinstance(node.op, ast.Add) else f"(-({right}))",
                        _span(node)))
    elif isinstance(node, ast.AugAssign) and type(node.op) in _BINOP_SWAP:
        new = copy.deepcopy(node)
        new.op = _BINOP_SWAP[type(node.op)]()
        out.append(("binop", ast.unparse(new), _span(node)))
    elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _CMP_SWAP:
        new = copy.deepcopy(node)
        new.ops = [_CMP_SWAP[type(node.ops[0])]()]
        out.append(("compare", f"({ast.unparse(new)})", _span(node)))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        if not isinstance(node.operand, ast.Constant):  # −1 as a literal is a constant, not a formula sign
            out.append(("neg", f"({_segment(lines, _span(node.operand))})", _span(node)))
    elif isinstance(node, ast.Constant):
        rep = _const_replacement(node.value)
        if rep is not None:
            text = ast.unparse(rep) if isinstance(rep, ast.AST) else repr(rep)
            out.append(("const", f"({text})", _span(node)))
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        attr = node.func.attr
        is_lib = isinstance(node.func.value, ast.Name) and node.func.value.id in _NUMPY_NAMES
        if attr in _REDUCE_SWAP:
            span = _span(node.func)
            base = _segment(lines, _span(node.func.value))
            out.append(("reduce", f"{base}.{_REDUCE_SWAP[attr]}", span))
        elif attr in _SQRT and is_lib and len(node.args) == 1 and not node.keywords:
            out.append(("sqrt", f"({_segment(lines, _span(node.args[0]))})", _span(node)))
    return out


def _find_function(tree: ast.Module, qualname: str):
    scope: list[ast.AST] = [tree]
    node = None
    for part in qualname.split("."):
        node = next((n for s in scope for n in getattr(s, "body", [])
                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                     and n.name == part), None)
        if node is None:
            raise SystemExit(f"mutate: function {qualname!r} not found")
        scope = [node]
    return node


def generate(source: str, functions: list[str]) -> list[Mutant]:
    tree = ast.parse(source)
    lines = source.encode().split(b"\n")
    mutants: list[Mutant] = []
    seen: dict[str, int] = {}
    for qual in functions:
        fn = _find_function(tree, qual)
        skip = _skipped_nodes(fn)
        for stmt in fn.body:
            for node in ast.walk(stmt):
                if id(node) in skip:
                    continue
                for op, rep, span in _mutations_of(node, lines):
                    orig = _segment(lines, span)
                    base = f"{qual}|{op}|{' '.join(orig.split())}→{rep}"
                    seen[base] = seen.get(base, 0) + 1
                    mutants.append(Mutant(f"{base}|{seen[base]}", qual, span[0], op,
                                          " ".join(orig.split()), rep, span))
    return mutants


def apply(source: str, m: Mutant) -> str:
    lines = source.encode().split(b"\n")
    l0, c0, l1, c1 = m.span
    head, tail = lines[l0 - 1][:c0], lines[l1 - 1][c1:]
    new = head + m.replacement.encode() + tail
    out = lines[:l0 - 1] + [new] + lines[l1:]
    text = b"\n".join(out).decode()
    ast.parse(text)  # every mutant must still be Python
    return text


# ----------------------------------------------------------------------------- running

def copy_tree(workdir: Path) -> None:
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "results", ".pytest_cache")
    for name in ("src", "tests"):
        shutil.copytree(ROOT / name, workdir / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, workdir / name)


def _child(workdir: Path, tests: list[str], log: Path) -> None:
    """In the forked child: pytest on the copy, sgdreg imported from workdir/src."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.chdir(workdir)
    sys.path.insert(0, str(workdir / "src"))
    sys.path.insert(0, str(workdir / "tests"))
    import jax
    jax.config.update("jax_compilation_cache_dir", str(workdir.parent / (workdir.name + "-xla")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    import pytest
    # every listed test that CI runs (its default suite and its slow stage), not dense/browser ones
    rc = pytest.main(["-x", "-q", "-n", "0", "-p", "no:cacheprovider", "-m", "not dense and not browser",
                      "--rootdir", str(workdir), "-c", str(workdir / "pyproject.toml"), *tests])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(rc))


def run_tests(workdir: Path, tests: list[str], timeout: float, log: Path) -> tuple[str, float]:
    if not tests:  # no default-suite test exercises this function: it survives untested
        log.write_text("no test selected\n")
        return "survived", 0.0
    t0 = time.time()
    pid = os.fork()
    if pid == 0:
        try:
            _child(workdir, tests, log)
        finally:
            os._exit(99)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            rc = os.waitstatus_to_exitcode(status)
            break
        if time.time() - t0 > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout", time.time() - t0
        time.sleep(0.2)
    dt = time.time() - t0
    if rc == 0:
        return "survived", dt
    if rc == 1:
        return "killed", dt
    if rc == 5:  # no test collected (all deselected): nothing could fail
        return "survived", dt
    return f"error(rc={rc})", dt  # collection error / crash: the mutant broke an import → killed


def _preimport() -> None:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ["SGDREG_NO_CACHE"] = "1"
    import diffrax  # noqa: F401
    import equinox  # noqa: F401
    import jax
    import numpy  # noqa: F401
    import optax  # noqa: F401
    import pandas  # noqa: F401
    import pytest  # noqa: F401
    import scipy  # noqa: F401
    from jax._src import xla_bridge
    assert not xla_bridge._backends, "XLA started before fork"
    del jax


def run_module(name: str, spec: dict, args) -> dict:
    workdir = Path(args.workdir)
    src_rel = spec["path"]
    source = (ROOT / src_rel).read_text()
    mutants = generate(source, spec["functions"])
    if args.only:
        mutants = [m for m in mutants if any(o in m.key for o in args.only)]
    sample = args.sample or int(spec.get("sample", 0))
    if sample and len(mutants) > sample and not (args.rerun_survivors or args.extend_to):
        # a seeded random subset, kept in source order
        keep = set(random.Random(0).sample(range(len(mutants)), sample))
        mutants = [m for i, m in enumerate(mutants) if i in keep]
    if args.list:
        for m in mutants:
            print(f"{m.line:5d} {m.key}")
        print(f"{len(mutants)} mutants")
        return {}
    copy_tree(workdir)
    target = workdir / src_rel
    logs = workdir.parent / (workdir.name + "-logs") / name
    logs.mkdir(parents=True, exist_ok=True)
    per_function = spec.get("function_tests", {})

    # `oracle_tests` (the tests/test_oracles_*.py added against survivors) run first in every
    # selection, except in the "before" run that measured the suite without them
    oracle = [] if args.label == "before" else spec.get("oracle_tests", [])

    def tests_for(fn: str) -> list[str]:  # the function's own selection, else the module's
        return oracle + [t for t in per_function.get(fn, spec["tests"]) if t not in oracle]

    carried: dict[str, dict] = {}
    if args.extend_to:  # keep this label's verdicts, add a seeded sample of not-yet-run mutants
        everything = generate(source, spec["functions"])
        old = json.loads((RESULTS / f"{name}.json").read_text())[args.label]["mutants"]
        carried = {r["key"]: r for r in old}
        rest = [m for m in everything if m.key not in carried]
        more = max(0, args.extend_to - len(old))
        pick = set(random.Random(len(old)).sample(range(len(rest)), min(more, len(rest))))
        keys = set(carried) | {m.key for i, m in enumerate(rest) if i in pick}
        mutants = [m for m in everything if m.key in keys]
    if args.rerun_survivors:  # keep the earlier run's verdicts for killed mutants, rerun the rest
        old = json.loads((RESULTS / f"{name}.json").read_text())[args.rerun_survivors]["mutants"]
        carried = {r["key"]: r for r in old if r["status"] != "survived"}
        keys = {r["key"] for r in old}
        mutants = [m for m in mutants if m.key in keys]
    todo = [m for m in mutants if m.key not in carried]
    union = list(dict.fromkeys(t for m in todo for t in tests_for(m.function)))
    timeout = float(spec.get("timeout", args.timeout))
    print(f"[{name}] {len(mutants)} mutants ({len(todo)} to run), timeout {timeout:.0f} s", flush=True)
    equivalent = spec.get("equivalent", {})
    rows = []
    for i, m in enumerate(mutants):
        if m.key in carried:
            rows.append({**carried[m.key], "carried": True} if args.rerun_survivors else carried[m.key])
            continue
        target.write_text(apply(source, m))
        status, dt = run_tests(workdir, tests_for(m.function), timeout, logs / f"{i:04d}.log")
        target.write_text(source)
        failing = ""
        if status != "survived":
            text = (logs / f"{i:04d}.log").read_text(errors="replace")
            failing = next((ln.split(" ")[1] for ln in text.splitlines()
                            if ln.startswith(("FAILED ", "ERROR "))), "")
        row = {**asdict(m), "status": status, "seconds": round(dt, 1), "killed_by": failing}
        if status == "survived" and m.key in equivalent:
            row["explained"] = equivalent[m.key]
        rows.append(row)
        print(f"[{name}] {i + 1}/{len(mutants)} {status:9s} {dt:5.0f}s  L{m.line} {m.operator}: "
              f"{m.original[:60]} → {m.replacement[:60]}", flush=True)
    # The unmutated tests that killed mutants must pass, else their verdicts mean nothing
    # (checked after the mutants, on the killing tests only: cheaper than the whole selection).
    killers = sorted({r["killed_by"] for r in rows if r.get("killed_by") and not r.get("carried")})
    baseline = "not needed"
    if killers and not args.no_baseline:
        target.write_text(source)
        baseline, dt = run_tests(workdir, killers, 10 * timeout, logs / "baseline.log")
        print(f"[{name}] baseline of the {len(killers)} killing tests: {baseline} in {dt:.0f} s", flush=True)
        if baseline != "survived":
            raise SystemExit(f"mutate: {name}: unmutated, the killing tests fail; see {logs}/baseline.log")
        baseline = "passed"
    return {"mutants": rows, "source_sha": _sha(source), "tests": union, "baseline": baseline,
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def _sha(text: str) -> str:
    import hashlib
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def summary(rows: list[dict], equivalent: dict | None = None) -> dict:
    n = len(rows)
    timeouts = sum(r["status"] == "timeout" for r in rows)
    survived = sum(r["status"] == "survived" for r in rows)
    explained = sum(r["status"] == "survived" and ("explained" in r or r["key"] in (equivalent or {}))
                    for r in rows)
    killed = n - survived - timeouts
    score = (killed + timeouts) / n if n else float("nan")
    return {"mutants": n, "killed": killed, "timeouts": timeouts, "survived": survived,
            "explained": explained, "score": score}


def write_scores(config: dict) -> None:
    head = ("| module | run | mutants | killed | timeouts | survived (explained) | score | "
            "score counting explained as killed |\n|---|---|---|---|---|---|---|---|\n")
    body = ""
    for name in config["module"]:
        path = RESULTS / f"{name}.json"
        if not path.exists():
            body += f"| {name} | not run | | | | | | |\n"
            continue
        data = json.loads(path.read_text())
        for label in ("before", "after"):
            if label not in data:
                continue
            s = summary(data[label]["mutants"], config["module"][name].get("equivalent"))
            n = s["mutants"] or float("nan")
            adj = (s["killed"] + s["timeouts"] + s["explained"]) / n
            body += (f"| {name} | {label} ({data[label]['date'][:16]}) | {s['mutants']} | "
                     f"{s['killed']} | {s['timeouts']} | {s['survived']} ({s['explained']}) | "
                     f"{s['score']:.0%} | {adj:.0%} |\n")
    planted_path = RESULTS / "planted.json"
    if planted_path.exists():
        data = json.loads(planted_path.read_text())
        body += (f"\n\nPlanted mutations of issue 17 ({data['date'][:16]}; each run against the "
                 "test files listed in targets.toml, killing test named):\n\n"
                 "| planted mutation | file | verdict | killed by |\n|---|---|---|---|\n")
        for r in data["mutations"]:
            body += f"| {r['name']} | {r['path']} | {r['status']} | {r['killed_by']} |\n"
    table = f"{BEGIN}\n{head}{body}{END}"
    text = SCORES.read_text() if SCORES.exists() else "# Mutation scores\n\n" + BEGIN + "\n" + END + "\n"
    i, j = text.index(BEGIN), text.index(END) + len(END)
    SCORES.write_text(text[:i] + table + text[j:])


def planted(config: dict, args) -> int:
    """The mutations planted by hand in issue 17 (``[[planted]]`` in targets.toml: exact text
    ``old`` → ``new`` in ``path``), each run against its test files; a table in SCORES.md."""
    _preimport()
    workdir = Path(args.workdir)
    copy_tree(workdir)
    logs = workdir.parent / (workdir.name + "-logs") / "planted"
    logs.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, spec in enumerate(config["planted"]):
        if args.only and not any(o in spec["name"] for o in args.only):
            continue
        target = workdir / spec["path"]
        source = (ROOT / spec["path"]).read_text()
        if source.count(spec["old"]) != 1:
            rows.append({**spec, "status": "not applied (text not found once)", "killed_by": ""})
            print(f"[planted] {spec['name']}: text not found once in {spec['path']}", flush=True)
            continue
        target.write_text(source.replace(spec["old"], spec["new"]))
        status, dt = run_tests(workdir, spec["tests"], args.timeout, logs / f"{i:02d}.log")
        target.write_text(source)
        text = (logs / f"{i:02d}.log").read_text(errors="replace")
        killers = [ln.split(" ")[1] for ln in text.splitlines() if ln.startswith(("FAILED ", "ERROR "))]
        rows.append({**spec, "status": status, "seconds": round(dt, 1), "killed_by": ", ".join(killers)})
        print(f"[planted] {spec['name']}: {status} in {dt:.0f} s by {killers}", flush=True)
    (RESULTS / "planted.json").write_text(json.dumps(
        {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "mutations": rows},
        indent=1, ensure_ascii=False) + "\n")
    write_scores(config)
    return 0


def verify(config: dict, args) -> int:
    """A killed verdict means something only if the killing test passes unmutated: run all the
    killing tests of the results once on a fresh unmutated copy (cheaper than a baseline per module)."""
    files = [RESULTS / f"{n}.json" for n in config["module"] if (RESULTS / f"{n}.json").exists()]
    killers = {r["killed_by"] for f in files for r in json.loads(f.read_text()).get(args.label, {})
               .get("mutants", []) if r.get("killed_by")}
    planted_path = RESULTS / "planted.json"
    if planted_path.exists():
        killers |= {k.strip() for r in json.loads(planted_path.read_text())["mutations"]
                    for k in r.get("killed_by", "").split(",") if k.strip()}
    killers = sorted(killers)
    _preimport()
    workdir = Path(args.workdir)
    copy_tree(workdir)
    log = workdir.parent / (workdir.name + "-logs") / "verify.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    status, dt = run_tests(workdir, killers, 20 * args.timeout, log)
    verdict = "passed" if status == "survived" else f"FAILED ({status}, see {log})"
    print(f"verify: {len(killers)} killing tests unmutated: {verdict} in {dt:.0f} s")
    if planted_path.exists():
        data = json.loads(planted_path.read_text())
        data["baseline"] = f"killing tests pass unmutated: {verdict}"
        planted_path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    for f in files:
        data = json.loads(f.read_text())
        if args.label in data:
            stamp = time.strftime("%H:%M UTC", time.gmtime())
            data[args.label]["baseline"] = f"killing tests pass unmutated: {verdict} {stamp}"
            f.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return 0 if status == "survived" else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("modules", nargs="*", help="module names from targets.toml")
    p.add_argument("--all", action="store_true", help="every module in targets.toml")
    p.add_argument("--label", default="before", help="results label (before/after)")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument("--only", action="append", help="run only mutants whose key contains this")
    p.add_argument("--sample", type=int, default=0, help="run a seeded random sample of N mutants")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per mutant (default 120)")
    p.add_argument("--workdir", default="/tmp/sgdreg-mut", help="copy of the tree the mutants run in")
    p.add_argument("--rerun-survivors", metavar="LABEL", help="rerun only LABEL's surviving mutants "
                   "(killed verdicts carried over: tests were only added)")
    p.add_argument("--extend-to", type=int, default=0, metavar="N", help="grow this label's sample to N "
                   "mutants (earlier verdicts kept, new ones drawn from the rest)")
    p.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    p.add_argument("--verify", action="store_true", help="run every test that killed a mutant (in any "
                   "results file, label --label) once on the unmutated copy; record the outcome")
    p.add_argument("--planted", action="store_true", help="run the hand-planted mutations of issue 17")
    p.add_argument("--scores", action="store_true", help="only rewrite the table in SCORES.md")
    args = p.parse_args(argv)
    config = tomllib.loads((HERE / "targets.toml").read_text())
    if args.scores:
        write_scores(config)
        return 0
    if args.verify:
        return verify(config, args)
    if args.planted:
        return planted(config, args)
    names = [n for n in config["module"] if not config["module"][n].get("by_hand")] if args.all \
        else args.modules
    unknown = [n for n in names if n not in config["module"]]
    if not names or unknown:
        p.error(f"give module names from targets.toml ({', '.join(config['module'])}) or --all")
    if Path(args.workdir).resolve() == ROOT or ROOT in Path(args.workdir).resolve().parents:
        p.error("--workdir must be outside the checkout")
    if not args.list:
        _preimport()
    RESULTS.mkdir(exist_ok=True)
    for name in names:
        spec = config["module"][name]
        result = run_module(name, spec, args)
        if args.list:
            continue
        path = RESULTS / f"{name}.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        data[args.label] = result
        path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        s = summary(result["mutants"])
        print(f"[{name}] {args.label}: {s}", flush=True)
        write_scores(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
