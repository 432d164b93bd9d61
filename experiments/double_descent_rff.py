"""Belkin et al. 2019 (random Fourier features) and sample-wise double descent (Nakkiran et al.
2019) on scikit-learn digits, pixels in [0,1], σ = ½ median pairwise distance (≈ 1.5; σ = 5 on
MNIST), min-norm least squares on one-hot targets, 5 seeds.

Model-wise: n = 500, N from 0.1n to 10n (25 log-spaced values with N = n).
Sample-wise: N = 300 fixed, n from 30 to all 1438 training examples (n = N included).

    python experiments/double_descent_rff.py   →  figures/data/double_descent_rff/,
                                                  figures/double_descent_rff.png/.svg
"""

from pathlib import Path

from sgdreg.datasets import open_dataset
from sgdreg.double_descent import feature_grid
from sgdreg.experiments.double_descent import rff_model_wise, rff_sample_wise
from sgdreg.plotting.double_descent import render_double_descent
from sgdreg.results import save_results, timed

NAME = "double_descent_rff"
ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_FIXED, SEEDS = 500, 300, (0, 1, 2, 3, 4)


def main():
    data = ROOT / "figures" / "data" / NAME
    digits = open_dataset("digits", preprocess="unit")
    grid = feature_grid(N_TRAIN, num=25)
    res, wall = timed(rff_model_wise, open_dataset("digits", preprocess="unit", n_train=N_TRAIN),
                      grid, SEEDS)
    save_results(data, "double_descent_rff", {"dataset": "digits", "preprocess": "unit",
                 "n_train": N_TRAIN, "features": grid, "seeds": SEEDS}, res, wall)
    sizes = [n for n in feature_grid(N_FIXED, num=25) if n <= digits.n_train] + [digits.n_train]
    res2, wall2 = timed(rff_sample_wise, digits, N_FIXED, sizes, SEEDS)
    save_results(data, "double_descent_samples", {"dataset": "digits", "preprocess": "unit",
                 "N": N_FIXED, "sample_sizes": sizes, "seeds": SEEDS}, res2, wall2)
    by_N = {r["N"]: r for r in res["mean"]}
    print(f"model-wise: test error at N=n {by_N[N_TRAIN]['test_error']:.3f}, at N=10n "
          f"{by_N[10 * N_TRAIN]['test_error']:.3f} (ratio "
          f"{by_N[N_TRAIN]['test_error'] / by_N[10 * N_TRAIN]['test_error']:.1f}); ‖a‖ peak at "
          f"N = {max(res['mean'], key=lambda r: r['norm'])['N']}; {wall:.0f} s")
    peak = max(res2["mean"], key=lambda r: r["test_error"])
    print(f"sample-wise: test error peaks at n = {peak['n']} ({peak['test_error']:.3f}); "
          f"{wall2:.0f} s")
    render_double_descent(data, ROOT / "figures" / f"{NAME}.png")


if __name__ == "__main__":
    main()
