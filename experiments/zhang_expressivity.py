"""Zhang et al. 2017, Theorem 1 (finite-sample expressivity) on scikit-learn digits.

The construction c(x) = Σ_j w_j ReLU(⟨a,x⟩ − b_j) with 2n + d weights fits n = 200 random labels
exactly; two-layer ReLU nets d → h → 10 with m·(2n + d) parameters, m = 1 … 32, are trained on the
same points and labels (Adam, lr 0.01, full batch, 3000 steps) for comparison.

    python experiments/zhang_expressivity.py   →  figures/data/zhang_expressivity/,
                                                  figures/zhang_expressivity.png/.svg

``--scale paper --data-dir DIR``: the same test on all 50,000 CIFAR-10 training images
(``paper.RECIPES["zhang_expressivity"]``) into figures/data/zhang_expressivity_paper/ and
figures/zhang_expressivity_paper.png.
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


def configure(args):
    """(dataset, n, RunConfig, multiples, seed): the digits default, or at ``--scale paper`` the
    recipe's."""
    r = args.recipe
    if r is None:
        return open_dataset("digits"), N, CONFIG, MULTIPLES, SEED
    c = paper.run_config(r, args.data_dir)
    ds = open_dataset(c.dataset, data_dir=c.data_dir, n_train=c.n_train, **paper.budget(args))
    return ds, ds.n_train, c, tuple(r.grid["multiple"]), r.seeds[0]


def main(argv=None):
    args = paper.at_scale(__file__, argv, __doc__)
    if args is None:
        return
    data, figure = paper.outputs(args, ROOT / "figures", NAME)
    ds, n, cfg, multiples, seed = configure(args)
    res, wall = timed(expressivity_test, ds, n, cfg, multiples, seed=seed, progress=print)
    save_results(data, "expressivity", {**cfg.to_dict(), "n": n, "multiples": multiples,
                 "seed": seed}, res, wall)
    paper.record(args, data)
    c = res["construction"]
    print(f"construction: {c['num_params']} parameters (2n+d = {2 * n + c['d']}), residual "
          f"{c['residual']:.2e}, train acc {c['train_acc']}")
    print(f"wall time {wall:.0f} s")
    render_expressivity(data, figure)


if __name__ == "__main__":
    main()
