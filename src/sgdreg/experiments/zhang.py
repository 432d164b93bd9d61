"""Zhang et al. 2017, "Understanding deep learning requires rethinking generalization"
(docs/science.md#generalization-experiments): the randomization tests of Fig. 1 and the finite-sample
expressivity of Theorem 1.

* ``randomization_test`` — true labels, label corruption p, shuffled pixels, random pixels,
  Gaussian inputs, hyper-parameters unchanged: the net fits them all, random labels more slowly.
* ``expressivity_test`` — the 2n + d weight construction of Theorem 1 against trained nets of
  matched size.

Results are JSON-ready dicts (``sgdreg.results.save_results``); the figures are in
``sgdreg.plotting.zhang``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..config import ConfigError, RunConfig, validate
from ..data import Dataset, subsample
from ..randomization import INPUT_KINDS, randomize
from ._common import Progress, curve, say, trace_path

CORRUPTIONS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
INPUT_RANDOMIZATIONS = INPUT_KINDS  # shuffled pixels, random pixels, Gaussian


def randomization_variants(corruptions: Sequence[float] = CORRUPTIONS,
                           inputs: Sequence[str] = INPUT_RANDOMIZATIONS) -> list[dict]:
    """The variants of Zhang et al. 2017, Fig. 1: label corruption p (p = 0 true labels, p = 1
    random labels), then the input randomizations (true labels kept)."""
    out = []
    for p in sorted(set(corruptions)):
        if not 0 <= p <= 1:
            raise ConfigError(f"corruptions must lie in [0, 1], got {p:g}")
        name = "true labels" if p == 0 else "random labels" if p == 1 else f"corrupt p={p:g}"
        kind = "none" if p == 0 else "random-labels" if p == 1 else "label-corruption"
        out.append({"variant": name, "kind": kind, "p": float(p)})
    for kind in inputs:
        if kind not in INPUT_KINDS:
            raise ConfigError(f"inputs: unknown {kind!r}; allowed: {', '.join(INPUT_KINDS)}")
        out.append({"variant": kind.replace("-", " "), "kind": kind, "p": None})
    return out


def randomization_test(cfg: RunConfig, corruptions: Sequence[float] = CORRUPTIONS,
                       inputs: Sequence[str] = INPUT_RANDOMIZATIONS, seeds: Sequence[int] = (0,),
                       trace_dir=None, progress: Progress | None = None) -> dict:
    """Randomization tests (Zhang et al. 2017, Fig. 1): train ``cfg`` unchanged on every variant.

    Per run: the training curve, steps to fit (first logged step at 100% train accuracy, None if
    never), its ratio to the true-label run of the same seed, and the test error on the true test
    labels. Each seed redraws θ0, the data order and the randomization.
    """
    from ..training import load_data, train

    variants = randomization_variants(corruptions, inputs)
    if not seeds:
        raise ConfigError("seeds: give at least one seed")
    validate(cfg)
    clean = load_data(cfg.replace(randomization="none"))
    if not clean.num_classes:
        raise ConfigError(f"randomization tests need a classification dataset; {cfg.dataset} "
                          "is regression")
    n = clean.n_train
    validate(cfg, n)
    runs = []
    for seed in seeds:
        for v in variants:
            c = cfg.replace(randomization=v["kind"], corruption=v["p"] or 0.0, seed=seed)
            ds = load_data(c)
            name = f"{v['kind']}_p{v['p'] if v['p'] is not None else 0:g}_s{seed}"
            res = train(c, ds, trace_path=trace_path(trace_dir, name))
            s = res.trace["summary"]
            runs.append({**v, "seed": seed, "status": res.trace["status"],
                         "steps_to_fit": s["steps_to_fit"], "final_train_acc": s["train_acc"],
                         "final_train_loss": s["train_loss"], "test_error": 1 - s["test_acc"],
                         "fraction_labels_changed":
                             ds.meta["randomization"]["fraction_labels_changed"]
                             if "randomization" in ds.meta else 0.0,
                         "curve": curve(res.trace)})
            say(progress, f"{v['variant']} (seed {seed}): steps to fit {s['steps_to_fit']}, "
                           f"test error {1 - s['test_acc']:.3f}")
    for r in runs:
        ref = next((q["steps_to_fit"] for q in runs if q["seed"] == r["seed"] and q["p"] == 0.0),
                   None)
        r["relative_time"] = r["steps_to_fit"] / ref if ref and r["steps_to_fit"] else None
    return {"n_train": n, "steps_per_epoch": cfg.steps_per_epoch(n), "seeds": list(seeds),
            "variants": variants, "runs": runs, "table": randomization_table(runs)}


def randomization_table(runs: list[dict]) -> list[dict]:
    """One row per variant: mean over seeds of steps to fit, relative time and test error;
    ``all_fit`` says whether every seed reached 100% train accuracy."""
    rows = []
    for name in dict.fromkeys(r["variant"] for r in runs):
        g = [r for r in runs if r["variant"] == name]
        fit = [r["steps_to_fit"] for r in g if r["steps_to_fit"] is not None]
        rel = [r["relative_time"] for r in g if r["relative_time"] is not None]
        rows.append({"variant": name, "kind": g[0]["kind"], "p": g[0]["p"],
                     "all_fit": len(fit) == len(g),
                     "steps_to_fit": float(np.mean(fit)) if fit else None,
                     "relative_time": float(np.mean(rel)) if rel else None,
                     "test_error": float(np.mean([r["test_error"] for r in g]))})
    return rows


# ---------------------------------------------------------------- Zhang et al. 2017, Theorem 1

def matched_width(num_params: int, d: int, k: int) -> int:
    """Hidden width h whose two-layer net d → h → k (with biases), h(d + 1) + (h + 1)k
    parameters, comes closest to ``num_params``."""
    return max(1, round((num_params - k) / (d + 1 + k)))


def expressivity_test(ds: Dataset, n: int, cfg: RunConfig, multiples: Sequence[float] = (1,),
                      seed: int = 0, trace_dir=None, progress: Progress | None = None) -> dict:
    """Theorem 1 (Zhang et al. 2017) on n points with random labels, against trained nets.

    The construction c(x) = Σ_j w_j ReLU(⟨a,x⟩ − b_j) has 2n + d weights and fits exactly
    (``expressivity.expressivity_report``). For each multiple m, a two-layer ReLU net d → h → K
    with ≈ m·(2n + d) parameters (``matched_width``) is trained by ``cfg`` on the same n points
    and labels; its best and final train accuracy are reported.
    """
    from ..expressivity import expressivity_report
    from ..training import train

    if not 1 <= n <= ds.n_train:
        raise ConfigError(f"n must be in 1..{ds.n_train} for {ds.name}, got {n}")
    if not ds.num_classes:
        raise ConfigError("expressivity needs a classification dataset (random class labels)")
    if any(not m > 0 for m in multiples):
        raise ConfigError("multiples must be finite numbers > 0")
    validate(cfg)
    report = expressivity_report(ds, n=n, labels="random", seed=seed)
    data = randomize(subsample(ds, n_train=n), "random-labels", seed=seed)  # the same labels
    d, k = report["d"], ds.num_classes
    trained = []
    for m in multiples:
        h = matched_width(round(m * report["num_params"]), d, k)
        c = cfg.replace(model="mlp", depth=1, width=h, seed=seed,
                        batch_size=min(cfg.batch_size, n))
        res = train(c, data, trace_path=trace_path(trace_dir, f"trained_x{m:g}"))
        acc = [a for a in res.trace["metrics"]["train_acc"] if a is not None]
        trained.append({"multiple": float(m), "width": h, "num_params": res.trace["num_params"],
                        "final_train_acc": acc[-1], "best_train_acc": max(acc),
                        "final_train_loss": res.trace["summary"]["train_loss"],
                        "steps_to_fit": res.trace["summary"]["steps_to_fit"],
                        "status": res.trace["status"], "curve": curve(res.trace)})
        say(progress, f"trained width {h} ({trained[-1]['num_params']} params): "
                       f"best train acc {max(acc):.3f}")
    return {"construction": report, "trained": trained, "chance": 1 / k}


__all__ = ["CORRUPTIONS", "INPUT_RANDOMIZATIONS", "expressivity_test", "matched_width",
           "randomization_table", "randomization_test", "randomization_variants"]
