"""The SDE of SGD and SVAG against SGD (docs/science.md#sde-of-sgd; Li, Tai & E 2017; Li, Malladi & Arora
2021).

Quadratic with additive gradient noise (ℓ_i = ½θᵀAθ − x_iᵀθ, eig A = 1, 1.5, 2.5, n = 8, B = 2,
float64): the SDE dynamics' stationary covariance over 8000 paths (h = 0.1, Euler–Maruyama
dt = 0.01, t = 5) against the Lyapunov solution of AC + CA = hΣ_B; SVAG's weak error
|E‖θ_T‖²_SVAG_ℓ − E‖θ_T‖²_SDE| at T = 1 (h = 0.2) against the closed-form SDE moments, exactly
(moment recursion, ℓ = 1…128) and by Monte Carlo with the SVAG dynamics (20000 paths per ℓ =
1…16), order fitted on log-log (expected 1). Network: tanh MLP 32 on 256 digits, cross-entropy,
float64, h = 0.2, B = 8, 300 steps from one θ0, 12 data seeds (paths) each for SGD (epoch
reshuffle), SVAG ℓ = 1, 4, 16 and the SDE (8 EM substeps per step), GD for reference; mean ± 1 std
over paths of the training loss and ‖θ − θ0‖ at t = k·h.

Writes figures/data/sde_svag/sde_svag.json and figures/sde_svag.png (+ .svg).

``--scale paper --data-dir DIR``: the network part on Li, Malladi & Arora's setup (ResNet-18 on
CIFAR-10, SGD and SVAG ℓ over the recipe's grid, ``paths`` data seeds each; the largest ℓ is the
reference in place of the SDE, whose every step costs the full batch;
``paper.RECIPES["sde_svag"]``), the quadratic part as by default (``extra.quadratic`` overrides
its settings), into figures/data/sde_svag_paper/ and figures/sde_svag_paper.png.
"""

import time
from pathlib import Path

import jax

from sgdreg.experiments import paper
from sgdreg.experiments.sde import run_sde_svag
from sgdreg.plotting.sde import render_sde_svag

NAME = "sde_svag"
ROOT = Path(__file__).resolve().parents[1] / "figures"
QUADRATIC = dict(eigs=(1.0, 1.5, 2.5), n=8, batch_size=2, h=0.2, stationary_h=0.1,
                 stationary_substeps=10, stationary_time=5.0, stationary_paths=8000, t_end=1.0,
                 ells=(1, 2, 4, 8, 16), exact_ells=(1, 2, 4, 8, 16, 32, 64, 128), mc_paths=20000,
                 sde_substeps=16, seed=0)
NETWORK = dict(dataset="digits", n_train=256, width=32, depth=1, activation="tanh", loss="ce",
               lr=0.2, batch_size=8, steps=300, log_every=10, paths=12, ells=(1, 4, 16),
               sde_substeps=8, seed=0, dtype="float64")


def configure(args) -> tuple[dict, dict]:
    """(quadratic, network) settings: the defaults, or at ``--scale paper`` the recipe's network
    (its model, data, lr, batch, steps, ℓ grid; SGD and SVAG only, the largest ℓ the
    reference)."""
    r = args.recipe
    if r is None:
        return QUADRATIC, NETWORK
    c = paper.run_config(r, args.data_dir, device_budget=args.device_budget)
    ells = tuple(int(v) for v in r.grid["svag_l"])
    return QUADRATIC | r.extra.get("quadratic", {}), dict(
        dataset=c.dataset, data_dir=c.data_dir, n_train=c.n_train, model=c.model,
        width=c.width, depth=c.depth, activation=c.activation, loss=c.loss, lr=c.lr,
        batch_size=c.batch_size, steps=c.steps, log_every=c.log_every,
        paths=r.extra["paths"], ells=ells, seed=c.seed, dtype=c.dtype,
        methods=("sgd", "svag"), reference=f"svag_l{max(ells)}", device_budget=c.device_budget)


def main(argv=None):
    args = paper.at_scale(__file__, argv, __doc__)
    if args is None:
        return
    jax.config.update("jax_enable_x64", True)
    out, figure = paper.outputs(args, ROOT, NAME)
    quadratic, network = configure(args)
    start = time.perf_counter()
    res = run_sde_svag(quadratic=quadratic, network=network, out_dir=out, progress=print)
    paper.record(args, out)
    render_sde_svag(out, figure)
    st, w = res["quadratic"]["stationary"], res["quadratic"]["weak"]
    print(f"stationary covariance: ‖Ĉ − C_Lyap‖/‖C_Lyap‖ = {st['relative_error']:.4f} (MC s.e. "
          f"{st['relative_error_mc_se']:.4f}, max |z| {st['max_abs_z']:.2f}, EM bias "
          f"{st['em_bias_relative']:.4f})")
    print(f"SVAG weak-error order: exact {w['exact_order']:.3f}, Monte Carlo {w['mc_order']:.3f} "
          f"± {w['mc_order_se']:.3f} (parametric bootstrap)")
    for name, m in res["network"]["methods"].items():
        d = m["final_loss_vs_sde"]
        print(f"{name:9s} final loss − {res['network']['reference']}: {d['difference']:+.5f} ± "
              f"{d['se']:.5f} (z {d['z']:+.2f})")
    print(f"wall time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
