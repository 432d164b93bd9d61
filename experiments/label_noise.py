"""Label-noise SGD drifts along the manifold of minima toward lower tr H (Blanc et al. 2020;
Damian, Ma & Lee 2021; docs/science.md#label-noise-sgd).

The 2-layer diagonal linear network f(x) = ⟨u⊙v, x⟩ (P = 40) on n = 10 noiseless examples in
d = 20 of the sparse teacher w* = (1, −1, 0.5, 0, …), ½·MSE, float64. θ0 is a sharp global
minimum: u = 2·1, v = (X⁺y)/2 (tr H = 74.2; the manifold's floor 2·min_{Xw=y} Σ c_j|w_j| is
3.09). Label-noise SGD (targets y + δε, δ = 1), plain SGD (B = 2) and GD, h = 0.025, 40,000
steps, seeds 0, 1, 2; the exact dense Hessian's trace, ‖θ − θ0‖, the train loss and
‖u⊙v − w*‖ every 400 steps. Expected: label-noise SGD's tr H falls toward the floor (the drop far
beyond its spread over seeds) while SGD and GD, whose every per-example gradient is zero at θ0,
stay put to rounding.

Writes figures/data/label_noise/label_noise.json and figures/label_noise.png (+ .svg).

``--scale paper --data-dir DIR``: the diagonal net is the theory's model; the paper's own
experiment is a ResNet-18 on CIFAR-10 (``paper.RECIPES["label_noise"]``). There the script
compares the curvature SGD ends at with and without label noise over seeds
(``label_noise_curvature``: Hutchinson tr H and λ_max at θ0 and at the end, paired per seed),
into figures/data/label_noise_paper/label_noise_curvature.json and
figures/label_noise_paper.png. It does not follow the drift over time, and it has no manifold
floor to compare with (neither is computable for a ResNet).
"""

import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

from sgdreg.experiments import paper  # noqa: E402
from sgdreg.experiments.label_noise import label_noise_curvature, run_label_noise  # noqa: E402
from sgdreg.plotting.label_noise import (  # noqa: E402
    render_label_noise,
    render_label_noise_curvature,
)

NAME = "label_noise"
ROOT = Path(__file__).resolve().parents[1] / "figures"
CONFIG = dict(n_train=10, dim=20, teacher=(1.0, -1.0, 0.5), imbalance=2.0, lr=0.025,
              label_noise=1.0, batch_size=2, steps=40_000, every=400, seeds=(0, 1, 2),
              project_steps=20_000,
              methods=("label-noise-sgd", "sgd", "gd"), data_seed=0)


def paper_scale(args, out, figure):
    """The network-scale comparison of the recipe (see the module docstring)."""
    r = args.recipe
    cfg = paper.run_config(r, args.data_dir, device_budget=args.device_budget)
    res = label_noise_curvature(cfg, r.grid["label_noise"], r.seeds, out_dir=out, progress=print)
    paper.record(args, out)
    render_label_noise_curvature(out, figure)
    for d, s in res["summary"].items():
        print(f"δ={d}: tr H {s['hessian_trace']}, λ_max {s['lambda_max']}"
              + "".join(f"; {k} {s[k]['mean']} ± {s[k]['sd']} (lower in seeds "
                        f"{s[k]['lower_in_seeds']})" for k in s if k.endswith("_minus_plain")))


def main(argv=None):
    args = paper.at_scale(__file__, argv, __doc__)
    if args is None:
        return
    out, figure = paper.outputs(args, ROOT, NAME)
    start = time.perf_counter()
    if args.recipe is not None:
        paper_scale(args, out, figure)
        print(f"wall time {time.perf_counter() - start:.1f} s")
        return
    res = run_label_noise(**CONFIG, out_dir=out, progress=print)
    render_label_noise(out, figure)
    print(f"tr H(θ0) = {res['trace_initial']} (closed form {res['trace_initial_closed_form']}), "
          f"floor {res['trace_floor']}, λ_max(θ0) = {res['lambda_max_initial']}, "
          f"L(0) = {res['loss_at_zero']}")
    for m, s in res["summary"].items():
        print(f"{m}: final tr H {s['final_trace']} (spread {s['final_trace_spread']}), drop "
              f"{s['trace_drop']}, max |ΔtrH| {s['max_abs_trace_change']}; ‖θ−θ0‖ "
              f"{s['final_distance']}; ‖u⊙v−w*‖ {s['final_teacher_distance']}; train loss "
              f"median {s['median_train_loss']} max {s['max_train_loss']}; test loss "
              f"{s['final_test_loss']}"
              + (f"; projected onto the manifold: tr H {s['projected_trace']}, train loss "
                 f"{s['projected_train_loss']}" if "projected_trace" in s else ""))
    print(f"wall time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
