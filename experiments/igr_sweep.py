"""Learning rate and width against R_IG = ‖∇L‖² and test accuracy (Barrett & Dherin 2021, §5).

Full-batch GD on 512 digits (ReLU MLP, cross-entropy, float32) for h = 0.05 … 4 and widths 32,
128, 512, each to t = steps·h ≈ 150, for seeds 0, 1, 2 (the seed picks θ0 and the 512-example
training subset; the 359 test digits are fixed). Reported at t = 150 and where the training loss
first reaches 0.03 (matched loss): R_IG, losses and test accuracy, as mean and min–max over the
seeds; Kendall τ of the seed means; and for each end-to-end comparison (smallest vs largest h per
width, smallest vs largest width per h) whether the seed ranges separate. A run whose loss became
non-finite or ended above its initial value counts as diverged. Published claim: larger h (and
larger models) give smaller R_IG and higher test accuracy. Same as

    sgdreg igr --sweep --seeds 0,1,2

Writes figures/data/igr_sweep/igr_sweep.json (traces not kept: the results hold every number the
figure needs) and figures/igr_sweep.png.

``--scale paper --data-dir DIR``: the same sweep with a ResNet-18 of width k on CIFAR-10 (full-batch
GD, ``paper.RECIPES["igr_sweep"]``: its lrs, k and t) into figures/data/igr_sweep_paper/ and
figures/igr_sweep_paper.png.
"""

import time
from pathlib import Path

import jax

from sgdreg.config import RunConfig
from sgdreg.experiments import igr, paper
from sgdreg.plotting.igr import render_sweep

jax.config.update("jax_enable_x64", True)  # as the other IGR scripts; this sweep runs in float32

NAME = "igr_sweep"
ROOT = Path(__file__).resolve().parents[1] / "figures"
CONFIG = RunConfig(**igr.SWEEP_DEFAULTS)


SWEEP = dict(time=150.0, target_loss=0.03, log_every=5)


def configure(args):
    """(base RunConfig, lrs, widths, seeds, sweep settings): the digits default, or at
    ``--scale paper`` the recipe's (widths = the ResNet-18's k)."""
    r = args.recipe
    if r is None:
        return CONFIG, igr.SWEEP_LRS, igr.SWEEP_WIDTHS, igr.SWEEP_SEEDS, SWEEP
    cfg = paper.run_config(r, args.data_dir, device_budget=args.device_budget)
    return (cfg, r.grid["lr"], r.grid["k"], r.seeds,
            SWEEP | paper.knobs(r, SWEEP))


def main(argv=None):
    args = paper.at_scale(__file__, argv, __doc__)
    if args is None:
        return
    out, figure = paper.outputs(args, ROOT, NAME)
    base, lrs, widths, seeds, sweep = configure(args)
    start = time.perf_counter()
    res = igr.igr_sweep(base, lrs, widths, seeds=seeds, **sweep, out_dir=out, traces=False,
                        progress=print)
    paper.record(args, out)
    fmt = lambda s: "—" if s is None else f"{s['mean']:.4g} [{s['min']:.4g}, {s['max']:.4g}]"  # noqa: E731
    for e in res["summary"]:
        print(f"w={e['width']:<4} h={e['lr']:<5g} {e['view']:<8} n={e['n']}/{e['seeds']} "
              f"R_IG={fmt(e['grad_norm_sq'])} test_loss={fmt(e['test_loss'])} "
              f"test_acc={fmt(e['test_acc'])} train_loss={fmt(e['train_loss'])} t={fmt(e['t'])}")
    for e in res["effects"]:
        fixed = "width" if e["against"] == "lr" else "lr"
        print(f"{e['key']:<12} {e['view']:<8} {fixed}={e[fixed]:<5g} {e['against']} {e['from']:g}→"
              f"{e['to']:g}: {fmt(e['low_end'])} → {fmt(e['high_end'])}  separated={e['separated']}")
    for t in res["trends"]:
        print(t)
    render_sweep(out, figure)
    print(f"wall time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
