"""Adam at the edge of stability (Cohen et al. 2022, "Adaptive gradient methods at the edge of
stability"; docs/science.md#adaptive-sharpness).

Full-batch Adam (b1 = 0.9, b2 = 0.999, ε = 1e-8) on the first 256 digits training examples
(standardized), tanh MLP 32×2, MSE loss, float64, h = 0.002, 0.004, 0.008 (38/h = 19,000, 9,500,
4,750), 2000 steps, seeds 0, 1, 2 (θ0 from the seed); the curvature probe's preconditioned sharpness
λ_max(P^{-1/2}HP^{-1/2}) with Adam's current P = √v̂ + ε read from the optax state, and the raw
λ_max, by warm-started Lanczos (60 steps) every 25 steps, the loss every 5. Expected (Cohen et al.
2022): the preconditioned sharpness rises to 38/h and hovers there (settled median over the last
third within a few % of 38/h) while the raw λ_max settles at no threshold.

Writes figures/data/adam_eos/adam_eos.json (traces not kept: the results hold every number the
figure needs) and figures/adam_eos.png (+ .svg).

``--scale paper --data-dir DIR``: the same experiment on the paper's setup (fc-tanh 200×2, MSE,
full-batch Adam on 5,000 CIFAR-10 images, float32; ``paper.RECIPES["adam_eos"]``) into
figures/data/adam_eos_paper/ and figures/adam_eos_paper.png.
"""

import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # the runs are float64, before any array

from sgdreg.experiments import paper  # noqa: E402
from sgdreg.experiments.adam_sharpness import run_adam_eos  # noqa: E402
from sgdreg.plotting.adam_sharpness import render_adam_sharpness  # noqa: E402

NAME = "adam_eos"
ROOT = Path(__file__).resolve().parents[1] / "figures"
CONFIG = dict(lrs=(0.002, 0.004, 0.008), seeds=(0, 1, 2), b1=0.9, dataset="digits", n_train=256,
              width=32, depth=2, steps=2000, sharpness_every=25, log_every=5, lanczos_steps=60,
              settle_fraction=1 / 3, dtype="float64")


def configure(args) -> dict:
    """CONFIG, or at ``--scale paper`` the recipe's setup."""
    r = args.recipe
    if r is None:
        return CONFIG
    c = paper.run_config(r, args.data_dir)
    return CONFIG | dict(lrs=r.grid["lr"], seeds=r.seeds, b1=c.momentum, dataset=c.dataset,
                         data_dir=c.data_dir, n_train=c.n_train, width=c.width, depth=c.depth,
                         steps=c.steps, sharpness_every=c.hessian_every, log_every=c.log_every,
                         lanczos_steps=c.lanczos_steps, dtype=c.dtype
                         ) | paper.knobs(r, CONFIG) | paper.budget(args)


def main(argv=None):
    args = paper.at_scale(__file__, argv, __doc__)
    if args is None:
        return
    out, figure = paper.outputs(args, ROOT, NAME)
    start = time.perf_counter()
    res = run_adam_eos(**configure(args), traces=False, out_dir=out, progress=print)
    paper.record(args, out)
    render_adam_sharpness(out, figure)
    for g in res["per_lr"]:
        print(f"h={g['lr']:<6g} 38/h={g['threshold']:<8.5g} settled ratio over seeds "
              f"{g['seeds']}: median {g['median_ratio']:.3f} [min {g['min_ratio']:.3f}, max "
              f"{g['max_ratio']:.3f}], per seed {[round(x, 3) for x in g['ratios']]}; raw λ_max "
              f"settled {[round(x, 3) for x in g['settled_lambda_max']]}")
    for r in res["runs"]:
        print(f"{r['run_id']}: reached 0.95·38/h at step {r['step_at_edge']}; max relative "
              f"residual {r['max_relative_residual']:.1e}, unconverged {r['unconverged']}/"
              f"{r['measured']}; final loss {r['train_loss_final']:.3g}; {r['wall_time_s']:.0f} s")
    print(f"wall time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
