"""Zhang et al. 2017, Theorem 1 (finite-sample expressivity) on scikit-learn digits.

The construction c(x) = Σ_j w_j ReLU(⟨a,x⟩ − b_j) with 2n + d weights fits n = 200 random labels
exactly; two-layer ReLU nets d → h → 10 with m·(2n + d) parameters, m = 1 … 32, are trained on the
same points and labels (Adam, lr 0.01, full batch, 3000 steps) for comparison.

    python experiments/zhang_expressivity.py   →  figures/data/zhang_expressivity/,
                                                  figures/zhang_expressivity.png/.svg
"""

from pathlib import Path

from sgdreg.config import RunConfig
from sgdreg.datasets import open_dataset
from sgdreg.experiments import paper
from sgdreg.experiments.zhang import expressivity_test
from sgdreg.plotting.zhang import render_expressivity
from sgdreg.results import save_results, timed

NAME = "zhang_expressivity"
ROOT = Path(__file__).resolve().parents[1]
N, MULTIPLES, SEED = 200, (1, 2, 4, 8, 16, 32), 0
CONFIG = RunConfig(dataset="digits", optimizer="adam", lr=0.01, steps=3000, batch_size=N,
                   log_every=30)


def main(argv=None):
    if paper.at_scale(__file__, argv, __doc__) is None:
        return
    data = ROOT / "figures" / "data" / NAME
    ds = open_dataset("digits")
    res, wall = timed(expressivity_test, ds, N, CONFIG, MULTIPLES, seed=SEED, progress=print)
    save_results(data, "expressivity", {**CONFIG.to_dict(), "n": N, "multiples": MULTIPLES,
                 "seed": SEED}, res, wall)
    c = res["construction"]
    print(f"construction: {c['num_params']} parameters (2n+d = {2 * N + c['d']}), residual "
          f"{c['residual']:.2e}, train acc {c['train_acc']}")
    print(f"wall time {wall:.0f} s")
    render_expressivity(data, ROOT / "figures" / f"{NAME}.png")


if __name__ == "__main__":
    main()
