"""Belkin et al. 2019 (random Fourier features) and sample-wise double descent (Nakkiran et al.
2019) on scikit-learn digits and mnist5k, pixels in [0,1], min-norm least squares a = Φ⁺Y on
one-hot targets (from Φ's SVD, ``double_descent.min_norm_rff``), float64, 5 seeds (the seed
draws the features; the train/test split is fixed).

Model-wise, digits: n = 500, σ = ½ median pairwise distance (≈ 1.5), N from 0.1n to 10n
(25 log-spaced values with N = n). Model-wise, mnist5k: n = 1000 of the 4000 training digits
(a few minutes on 2 CPU cores), σ = 5 (Belkin et al. 2019's MNIST bandwidth; ½ median ≈ 5.1),
13 log-spaced N from 0.1n to 10n. Both: err(N = n)/err(N = 10n) per seed, the ratio of the seed
means, and a 95% bootstrap over test images (``double_descent.threshold_ratio``).
Sample-wise (digits): N = 300 fixed, n from 30 to all 1438 training examples (n = N included).

    python experiments/double_descent_rff.py   →  figures/data/double_descent_rff/,
                                                  figures/double_descent_rff.png/.svg

``--scale paper --data-dir DIR``: Belkin et al.'s MNIST setup (n = 10,000 of the MNIST training
images, σ = 5, the recipe's N grid; ``paper.RECIPES["double_descent_rff"]``) model-wise, and the
sample-wise curve on MNIST, into figures/data/double_descent_rff_paper/ and
figures/double_descent_rff_paper.png.
"""

from pathlib import Path

import numpy as np

from sgdreg.datasets import open_dataset
from sgdreg.double_descent import feature_grid
from sgdreg.experiments import paper
from sgdreg.experiments.double_descent import rff_model_wise, rff_sample_wise
from sgdreg.plotting.double_descent import render_double_descent
from sgdreg.results import save_results, timed

NAME = "double_descent_rff"
ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_FIXED, SEEDS = 500, 300, (0, 1, 2, 3, 4)
MNIST_N, MNIST_SIGMA = 1000, 5.0


def report(res, wall):
    q = res["ratio"]
    per = ", ".join("∞" if p["ratio"] is None else f"{p['ratio']:.0f}" for p in q["per_seed"])
    boot = q["bootstrap"]
    high = "∞" if boot["high"] is None else f"{boot['high']:.0f}"
    print(f"{res['dataset']} n = {res['n']}: test error {q['err_n']:.3f} at N = n vs "
          f"{q['err_far']:.4f} at N = 10n: ratio of seed means {q['ratio']:.0f}, per seed {per}; "
          f"95% bootstrap over test images [{boot['low']:.0f}, {high}]; wrong test images at "
          f"N = 10n: {[p['wrong_far'] for p in q['per_seed']]} of {q['n_test']}; ‖a‖ peak at "
          f"N = {max(res['mean'], key=lambda r: r['norm'])['N']}; {wall:.0f} s")


def configure(args):
    """(model-wise runs, sample-wise run): each a (result name, dataset, config) with the config
    holding the grid, seeds and σ; digits and mnist5k by default, the recipe's MNIST setup at
    ``--scale paper``."""
    r = args.recipe
    if r is None:
        digits = open_dataset("digits", preprocess="unit", dtype=np.float64)
        sub = open_dataset("digits", preprocess="unit", n_train=N_TRAIN, dtype=np.float64)
        m5k = open_dataset("mnist5k", preprocess="unit", n_train=MNIST_N, dtype=np.float64)
        model_wise = [("double_descent_rff", sub, {"dataset": "digits", "n_train": N_TRAIN,
                       "features": feature_grid(N_TRAIN, num=25), "seeds": SEEDS}),
                      ("double_descent_rff_mnist5k", m5k, {
                          "dataset": "mnist5k", "n_train": MNIST_N, "sigma": MNIST_SIGMA,
                          "features": feature_grid(MNIST_N), "seeds": SEEDS})]
        sizes = [n for n in feature_grid(N_FIXED, num=25) if n <= digits.n_train] + [digits.n_train]
        return model_wise, ("double_descent_samples", digits, {
            "dataset": "digits", "N": N_FIXED, "sample_sizes": sizes, "seeds": SEEDS})
    full = open_dataset(r.dataset, data_dir=args.data_dir, preprocess="unit", dtype=np.float64)
    sub = open_dataset(r.dataset, data_dir=args.data_dir, preprocess="unit", n_train=r.n,
                       dtype=np.float64)
    sigma, n_fixed = r.extra["sigma"], r.extra["sample_wise_N"]
    sizes = sorted({n for n in feature_grid(n_fixed, num=25) if n <= full.n_train} | {n_fixed})
    return ([("double_descent_rff", sub, {"dataset": r.dataset, "n_train": r.n, "sigma": sigma,
              "features": list(r.grid["N"]), "seeds": r.seeds})],
            ("double_descent_samples", full, {"dataset": r.dataset, "N": n_fixed,
             "sample_sizes": sizes, "seeds": r.seeds, "sigma": sigma}))


def main(argv=None):
    args = paper.at_scale(__file__, argv, __doc__)
    if args is None:
        return
    data, figure = paper.outputs(args, ROOT / "figures", NAME)
    model_wise, (sname, sds, scfg) = configure(args)
    for name, ds, cfg in model_wise:
        res, wall = timed(rff_model_wise, ds, cfg["features"], cfg["seeds"], cfg.get("sigma"))
        save_results(data, name, {"preprocess": "unit", **cfg}, res, wall)
        report(res, wall)
    res2, wall2 = timed(rff_sample_wise, sds, scfg["N"], scfg["sample_sizes"], scfg["seeds"],
                        scfg.get("sigma"))
    save_results(data, sname, {"preprocess": "unit", **scfg}, res2, wall2)
    paper.record(args, data)
    peak = max(res2["mean"], key=lambda r: r["test_error"])
    print(f"sample-wise: test error peaks at n = {peak['n']} ({peak['test_error']:.3f}); "
          f"{wall2:.0f} s")
    render_double_descent(data, figure)


if __name__ == "__main__":
    main()
