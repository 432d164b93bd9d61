"""Edge of stability (Cohen et al. 2021, Fig. 1; docs/science.md#curvature).

Full-batch GD on all 1,438 digits training examples (standardized), tanh MLP 200×2, MSE loss
(½‖f − onehot‖²), float32, seed 0, for h = 0.1, 0.2, 0.4 (2/h = 20, 10, 5), 3000 steps each;
λ_max by warm-started Lanczos (20 steps) every 20 steps, the loss every 5; the gradient flow
from the same θ0 to t = 3000·0.1 = 300. Expected: λ_max rises (progressive sharpening) to 2/h
and hovers there (settled median within a few % of 2/h) while the loss keeps falling
non-monotonically; the flow's λ_max rises past every 2/h. Same as

    sgdreg eos --lr 0.1,0.2,0.4 --steps 3000 --no-traces

Writes figures/data/eos/eos.json (traces not kept: the results hold every number the figure
needs) and figures/eos.png (+ .svg).

``--scale paper --data-dir DIR``: the same experiment on Cohen et al.'s setup (fc-tanh 200×2,
MSE, full-batch GD on 5,000 CIFAR-10 images, h = 2/30 … 2/90; ``paper.RECIPES["cohen_eos"]``)
into figures/data/cohen_eos_paper/ and figures/cohen_eos_paper.png.
"""

import time
from pathlib import Path

from sgdreg.experiments import paper
from sgdreg.experiments.eos import run_edge_of_stability
from sgdreg.plotting.eos import render_eos

NAME = "eos"
ROOT = Path(__file__).resolve().parents[1] / "figures"
CONFIG = dict(lrs=(0.1, 0.2, 0.4), optimizer="gd", dataset="digits", n_train=None, width=200,
              depth=2, steps=3000, sharpness_every=20, log_every=5, lanczos_steps=20,
              settle_fraction=1 / 3, include_flow=True, seed=0, dtype="float32")


def configure(args) -> dict:
    """CONFIG, or at ``--scale paper`` the recipe's setup."""
    r = args.recipe
    if r is None:
        return CONFIG
    c = paper.run_config(r, args.data_dir)
    return CONFIG | dict(lrs=r.grid["lr"], optimizer=c.optimizer, dataset=c.dataset,
                         data_dir=c.data_dir, n_train=c.n_train, width=c.width, depth=c.depth,
                         steps=c.steps, sharpness_every=c.hessian_every, log_every=c.log_every,
                         lanczos_steps=c.lanczos_steps, seed=c.seed,
                         dtype=c.dtype) | paper.knobs(r, CONFIG) | paper.budget(args)


def main(argv=None):
    args = paper.at_scale(__file__, argv, __doc__)
    if args is None:
        return
    out, figure = paper.outputs(args, ROOT, NAME)
    start = time.perf_counter()
    res = run_edge_of_stability(**configure(args), traces=False, out_dir=out, progress=print)
    paper.record(args, out)
    render_eos(out, figure)
    for r in res["runs"]:
        print(f"h={r['lr']:<5g} 2/h={r['threshold']:<6.4g} λ_max(0)={r['lambda_max_initial']:.3f} "
              f"settled median {r['settled_lambda_max']:.3f} (mean {r['mean_lambda_max']:.3f}) "
              f"ratio {r['ratio']:.3f}; reached 0.95·2/h at t={r['t_at_edge']}; loss increases "
              f"{r['loss_increases']}/{r['loss_comparisons']}; {r['wall_time_s']:.0f} s")
    f = res["flow_vs_largest"]
    if f:
        print(f"flow at t={f['t']}: λ_max={f['flow_lambda_max']} vs GD(h={f['lr']:g}) "
              f"{f['gd_lambda_max']}, 2/h={f['threshold']:.3g}; at t={f['flow_t_end']:g}: "
              f"{f['flow_lambda_max_end']}; flow crosses "
              + ", ".join(f"2/h={c['threshold']:.3g} at t={c['t_flow_crosses']} (GD at the edge "
                          f"at t={c['t_gd_at_edge']})" for c in f["crossings"]))
    print(f"wall time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
