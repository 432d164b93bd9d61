"""Central flow vs gradient flow vs modified flow at the edge of stability (Cohen, Damian et al.,
"Understanding Optimization in Deep Learning with Central Flows"; docs/science.md#central-flow).

The ``eos`` setting made small: full-batch GD with h = 0.8 (2/h = 2.5) on 256 standardized digits
training examples, tanh MLP 32×2, MSE, float64, 200 steps, seeds 0, 1, 2 (θ0 per seed); from the
same θ0 the gradient flow and the IGR modified flow (Tsit5, rtol 1e-8) and the central flow
(k = 3 tracked eigenvalues, 4 Euler substeps per step). GD's time average: the centred window
(θ_{k−1} + 2θ_k + θ_{k+1})/4 (m = 1; m = 4 stored too). Reported per model: the distance
‖θ_model(t) − θ̄_GD(t)‖ and the loss error |L_model − L̄_GD| (central flow: its predicted
L + tr X/h) over time and their means over the EoS window (from GD's λ_max ≥ 0.95·2/h).

Writes figures/data/central_flow/central_flow.json and figures/central_flow.png (+ .svg).

``--scale paper --data-dir DIR``: the same comparison on CIFAR-10 (fc-tanh 200×2, MSE, h = 2/50,
float64; ``paper.RECIPES["central_flow_eos"]``, its cost in the recipe's note) into
figures/data/central_flow_eos_paper/ and figures/central_flow_eos_paper.png.
"""

import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # the runs are float64, before any array

from sgdreg.experiments import paper  # noqa: E402
from sgdreg.experiments.central_flow import MODELS, run_central_flow_comparison  # noqa: E402
from sgdreg.plotting.central_flow import render_central_flow  # noqa: E402

NAME = "central_flow"
ROOT = Path(__file__).resolve().parents[1] / "figures"
CONFIG = dict(lr=0.8, dataset="digits", n_train=256, width=32, depth=2, steps=200,
              seeds=(0, 1, 2), eigs=3, substeps=4, window=1, windows=(1, 4), log_every=4,
              sharpness_every=4, edge_fraction=0.95, rtol=1e-8, atol=1e-10, dtype="float64")


def configure(args) -> dict:
    """CONFIG, or at ``--scale paper`` the recipe's setup."""
    r = args.recipe
    if r is None:
        return CONFIG
    c = paper.run_config(r, args.data_dir)
    return CONFIG | dict(lr=c.lr, dataset=c.dataset, data_dir=c.data_dir, n_train=c.n_train,
                         width=c.width, depth=c.depth, steps=c.steps, seeds=r.seeds,
                         dtype=c.dtype) | paper.knobs(r, CONFIG) | paper.budget(args)


def main(argv=None):
    args = paper.at_scale(__file__, argv, __doc__)
    if args is None:
        return
    out, figure = paper.outputs(args, ROOT, NAME)
    start = time.perf_counter()
    res = run_central_flow_comparison(**configure(args), out_dir=out, progress=print)
    paper.record(args, out)
    render_central_flow(out, figure)
    summ = res["summary"]
    for name in MODELS:
        d, e = (summ["models"][name][k] for k in ("distance_mean_min_max",
                                                   "loss_error_mean_min_max"))
        print(f"{name:>14}: EoS-window mean distance {d[0]:.4g} (seeds {d[1]:.4g}–{d[2]:.4g}), "
              f"loss error {e[0]:.4g} ({e[1]:.4g}–{e[2]:.4g})")
    print("best other / central, distance:", [f"{x:.3g}" for x in
                                               summ["other_over_central_distance"]],
          "loss error:", [f"{x:.3g}" for x in summ["other_over_central_loss_error"]])
    for s in res["seeds"]:
        cf = s["models"]["central-flow"]
        print(f"seed {s['seed']}: GD at the edge from step {s['step_at_edge']}; central flow "
              f"λ/(2/h) at θ0 {cf['initial_eigenvalue_over_edge']:.4f}, max over t > 0 "
              f"{cf['max_eigenvalue_over_edge']:.5f}, max SDCP residual "
              f"{cf['max_sdcp_residual']:.2g}")
    print(f"wall time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
