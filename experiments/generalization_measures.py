"""Jiang et al. 2020, "Fantastic generalization measures and where to find them"
(docs/science.md#generalization-measures),
at laptop scale: which measures of a trained network rank its generalization gap?

Default grid (32 runs, CPU in minutes): one-hidden-layer ReLU MLP on scikit-learn digits, plain
SGD, lr ∈ {0.05, 0.2} × batch size ∈ {32, 128} × width ∈ {64, 256} × label corruption
p ∈ {0, 0.2} (``label-corruption``: each training label redrawn with probability p) × seeds
{0, 1}. Protocol: every run trains until its full-batch training cross-entropy is ≤ 0.05
(``stop_loss``, checked every 22 steps, at most 20,000 steps); a run that does not get there is
discarded and listed. Measures of each final model (norms and distances from θ0, spectral and
Frobenius products, path norm, margin-normalised norms, PAC-Bayes flatness and sharpness plain
and magnitude-aware, Hessian trace and λ_max of the final model, IGR terms, gradient noise,
steps to L*) are ranked by Kendall τ with the accuracy gap (train − test accuracy), with 95%
bootstrap CIs over runs and the granulated Ψ over lr, batch size, width and p.

``--large`` (a GPU, or patience): 5,000 real MNIST digits (mnist5k), widths {256, 1024}, depth
{1, 2}, lr {0.02, 0.1}, batch {32, 128}, p ∈ {0, 0.2}, seeds {0, 1, 2}: 96 runs, written to
``*_large`` names so the gallery's default result stays.

    python experiments/generalization_measures.py [--large] [--out DIR]

``--scale paper --data-dir DIR``: the recipe's grid (ResNet-18 of width k on CIFAR-10, SGD, to
train cross-entropy 0.01; ``paper.RECIPES["generalization_measures"]``), written to
``*_paper`` names (sgdreg-runs/, figures/data/, figures/).

Runs (traces, models; an interrupted grid resumes) go to sgdreg-runs/generalization_measures/;
correlation.json, measures.json and experiment.json to figures/data/generalization_measures/;
the figure to figures/generalization_measures.png/.svg. Same as

    sgdreg correlate sgdreg-runs/generalization_measures --curvature
"""

import argparse
import json
import shutil
import time
from pathlib import Path

from sgdreg.config import RunConfig
from sgdreg.experiments import generalization as gz
from sgdreg.experiments import paper
from sgdreg.plotting.generalization import ranking_table, render_generalization
from sgdreg.trace import atomic_write_json, device_info, versions

NAME = "generalization_measures"
ROOT = Path(__file__).resolve().parents[1]
STOP_LOSS = 0.05
DEFAULT = {
    "name": NAME,
    "base": {"dataset": "digits", "model": "mlp", "depth": 1, "optimizer": "sgd",
             "randomization": "label-corruption", "stop_loss": STOP_LOSS, "steps": 20_000,
             "log_every": 22},
    "grid": {"lr": [0.05, 0.2], "batch_size": [32, 128], "width": [64, 256],
             "corruption": [0.0, 0.2], "seed": [0, 1]},
}
LARGE = {
    "name": f"{NAME}_large",
    "base": {"dataset": "mnist5k", "model": "mlp", "optimizer": "sgd",
             "randomization": "label-corruption", "stop_loss": STOP_LOSS, "steps": 50_000,
             "log_every": 50},
    "grid": {"lr": [0.02, 0.1], "batch_size": [32, 128], "width": [256, 1024],
             "depth": [1, 2], "corruption": [0.0, 0.2], "seed": [0, 1, 2]},
}
MEASURE_OPTIONS = {"flatness": True, "curvature": True}


def configure(args) -> dict:
    """The sweep grid: DEFAULT (or LARGE), or at ``--scale paper`` the recipe's (ResNet-18 width
    k as ``width``, its label-noise axis as ``corruption``)."""
    r = args.recipe
    if r is None:
        return LARGE if args.large else DEFAULT
    c = paper.run_config(r, args.data_dir, device_budget=args.device_budget)
    c = c.replace(randomization="label-corruption", stop_loss=r.extra["stop_loss"])
    default = RunConfig().to_dict()
    return {"name": f"{NAME}_paper",
            "base": {k: v for k, v in c.to_dict().items() if v != default[k]},
            "grid": {"width": list(r.grid["k"]), "lr": list(r.grid["lr"]),
                     "corruption": list(r.grid["noise"]), "seed": list(r.seeds)}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", "--gpu", action="store_true", help="the 96-run MNIST grid")
    parser.add_argument("--out", type=Path, default=None, help="run directory")
    args = paper.at_scale(__file__, argv, __doc__, parser=parser)
    if args is None:
        return
    grid = configure(args)
    name = grid["name"]
    runs = args.out or ROOT / "sgdreg-runs" / name
    start = time.perf_counter()
    index = gz.train_grid(grid, runs, progress=print)
    trained = time.perf_counter()
    doc = gz.correlate(runs, gap="acc_gap", progress=print, **MEASURE_OPTIONS)
    done = time.perf_counter()
    table = json.loads((runs / gz.MEASURES_FILE).read_text())

    data = ROOT / "figures" / "data" / name
    data.mkdir(parents=True, exist_ok=True)
    for f in (gz.CORRELATION_FILE, gz.MEASURES_FILE):
        shutil.copy(runs / f, data / f)
    atomic_write_json(data / "experiment.json", {
        "experiment": name, "grid": grid, "measure_options": MEASURE_OPTIONS,
        "wall_time_s": {"train": trained - start, "measures_and_ranking": done - trained,
                        "total": done - start},
        "runs_trained": sum(not r["reused"] for r in index["runs"]),
        "measures_computed": sum(r.get("cached") is False for r in table["runs"]),
        "device": device_info(), "versions": versions()})
    paper.record(args, data)
    files = render_generalization(data, ROOT / "figures" / f"{name}.png")

    print(f"\n{doc['num_kept']} of {doc['num_runs']} runs at train loss ≤ "
          f"{grid['base']['stop_loss']}; hyper-parameters {', '.join(doc['hyperparams'])}")
    for d in doc["discarded"]:
        print(f"  discarded {d['run_id']}: {d['reason']}")
    cols, rows = ranking_table(doc)
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join("–" if v is None else str(v) for v in r))
    print(f"wall time {done - start:.0f} s (training {trained - start:.0f} s, measures and "
          f"ranking {done - trained:.0f} s); figure {files[0]}")


if __name__ == "__main__":
    main()
