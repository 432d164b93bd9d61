"""Zhang et al. 2017, §5 (minimum-norm interpolation) on scikit-learn digits and mnist5k.

RBF interpolation Kα = Y on all 1438 standardized digits (bandwidth: median pairwise distance);
GD from W₀ = 0 on the first 30 digits (d = 64 ≥ n) reaching the min-norm interpolant; the norm
across kernels (unit / standardize × bandwidth ½, 1, 2× median: six function spaces) against the
test error; at each fixed kernel the norm of true against random labels (seeds 0–9); and the RBF
interpolant of the 4000 mnist5k digits with pixels in [0,1] (random labels: seeds 0–9).

    python experiments/min_norm_kernel.py   →  figures/data/min_norm_kernel/,
                                               figures/min_norm_kernel.png/.svg

``--scale paper --data-dir DIR``: the RBF interpolant of all 60,000 MNIST training images (the
paper's §5 setup), GD from zero on the first 30, the table and the random-label norms on the
first ``small_n`` (``paper.RECIPES["min_norm_kernel"]``), into
figures/data/min_norm_kernel_paper/ and figures/min_norm_kernel_paper.png.
"""

from pathlib import Path

import jax

from sgdreg.datasets import open_dataset
from sgdreg.experiments import paper
from sgdreg.experiments.kernel import min_norm_kernel
from sgdreg.kernels import kernel_interpolate, random_label_norms
from sgdreg.plotting.kernel import render_kernel
from sgdreg.results import save_results, timed

jax.config.update("jax_enable_x64", True)  # GD to the min-norm solution runs in float64, before any array

NAME = "min_norm_kernel"
ROOT = Path(__file__).resolve().parents[1]
SEEDS = list(range(10))  # random-label draws at each fixed kernel
CONFIG = {"dataset": "digits", "kernel": "rbf", "bandwidth": None, "gd_n": 30, "gd_steps": 5000,
          "random_label_seeds": SEEDS,
          "mnist5k": {"preprocess": "unit", "kernel": "rbf", "bandwidth": None,
                      "random_label_seeds": SEEDS}}


def configure(args) -> dict:
    """The data and settings: digits (+ mnist5k) by default; at ``--scale paper`` the recipe's
    MNIST (all n for the interpolant, the first small_n raw images for the table and the
    random-label norms)."""
    r = args.recipe
    if r is None:
        return {"config": CONFIG, "ds": open_dataset("digits"),
                "raw": open_dataset("digits", preprocess="none"),
                "others": [("mnist5k (pixels in [0,1])", open_dataset("mnist5k", preprocess="unit"))],
                "more_fixed": [open_dataset("mnist5k", preprocess="none")], "seeds": SEEDS}
    small = r.extra["small_n"]
    seeds = list(r.seeds)
    return {"config": {"dataset": r.dataset, "n_train": r.n, "kernel": "rbf", "bandwidth": None,
                       "gd_n": CONFIG["gd_n"], "gd_steps": CONFIG["gd_steps"],
                       "random_label_seeds": seeds, "small_n": small},
            "ds": open_dataset(r.dataset, data_dir=args.data_dir, n_train=r.n),
            "raw": open_dataset(r.dataset, data_dir=args.data_dir, preprocess="none",
                                n_train=small),
            "others": [], "more_fixed": [], "seeds": seeds}


def run(setup: dict) -> dict:
    seeds = setup["seeds"]
    res = min_norm_kernel(setup["ds"], "rbf", None, CONFIG["gd_n"], CONFIG["gd_steps"],
                          setup["raw"], progress=print, random_label_seeds=seeds)
    res["other_interpolations"] = [{"dataset": name, **kernel_interpolate(ds, "rbf").as_dict()}
                                   for name, ds in setup["others"]]
    for raw in setup["more_fixed"]:
        res["fixed_kernel"] += random_label_norms(raw, ("unit",), (1.0,), seeds)
    return res


def main(argv=None):
    args = paper.at_scale(__file__, argv, __doc__)
    if args is None:
        return
    data, figure = paper.outputs(args, ROOT / "figures", NAME)
    setup = configure(args)
    res, wall = timed(run, setup)
    save_results(data, "kernel", setup["config"], res, wall)
    paper.record(args, data)
    for r in [res["interpolation"], *res["other_interpolations"], *res["preprocessing_table"]]:
        print({k: r[k] for k in r if k in ("dataset", "preprocessing", "bandwidth_scale", "n",
                                           "train_error", "test_error", "rkhs_norm")})
    for r in res["fixed_kernel"]:
        print(f"{r['dataset']} {r['preprocessing']} σ×{r['bandwidth_scale']:g}: norm true "
              f"{r['rkhs_norm_true']:.4g}, random/true {r['ratio_min']:.3f}–{r['ratio_max']:.3f} "
              f"(seeds {r['seeds'][0]}–{r['seeds'][-1]})")
    g = res["gd"]
    print(f"GD from zero: ‖W − W*‖/‖W*‖ = {g['final_dist']:.2e} after {g['steps']} steps "
          f"(κ = {g['kappa']:.0f}); test error {g['test_error_gd']:.3f}")
    print(f"wall time {wall:.0f} s")
    render_kernel(data, figure)


if __name__ == "__main__":
    main()
