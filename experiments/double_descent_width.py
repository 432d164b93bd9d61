"""Deep double descent (Nakkiran et al. 2019) at CPU scale: model-wise and epoch-wise on 500
standardized digits with label noise (a fraction of train labels set to a uniform incorrect
class), Adam lr 1e-3, batch 32.

Model-wise: one-hidden-layer MLPs of widths 4 … 512 (310 … 38k parameters; n·K = 5000),
noise 0 / 10 / 20%, 200 epochs each, 5 seeds (init, minibatch order and which labels are
corrupted all change with the seed). Epoch-wise: width 512, 20% noise, 1000 epochs, one seed,
test error logged every epoch.

    python experiments/double_descent_width.py   →  figures/data/double_descent_width/,
                                                    figures/double_descent_width.png/.svg

``--scale paper --data-dir DIR``: Nakkiran et al.'s setup (ResNet-18 of width k = 1 … 64 on
CIFAR-10, Adam lr 1e-4, batch 128, 4000 epochs, 15% label noise; the epoch-wise curve at
k = 64; ``paper.RECIPES["double_descent_width"]``) into figures/data/double_descent_width_paper/
and figures/double_descent_width_paper.png.
"""

from pathlib import Path

from sgdreg.config import RunConfig
from sgdreg.experiments import paper
from sgdreg.experiments.double_descent import deep_epoch_wise, deep_model_wise
from sgdreg.plotting.double_descent import render_double_descent
from sgdreg.results import save_results, timed

NAME = "double_descent_width"
ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, STEPS_PER_EPOCH = 500, 500 // 32
WIDTHS, NOISES, SEEDS = (4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512), (0.0, 0.1, 0.2), (0, 1, 2, 3, 4)
BASE = RunConfig(dataset="digits", n_train=N_TRAIN, model="mlp", depth=1, optimizer="adam",
                 lr=1e-3, batch_size=32)
MODEL_WISE = BASE.replace(steps=200 * STEPS_PER_EPOCH, log_every=200 * STEPS_PER_EPOCH)
EPOCH_WISE = BASE.replace(width=512, steps=1000 * STEPS_PER_EPOCH, log_every=STEPS_PER_EPOCH)


def configure(args):
    """(model-wise config, widths, noises, seeds, epochs; epoch-wise config, noise, epochs): the
    digits MLP default, or at ``--scale paper`` the recipe's ResNet-18 (width = k)."""
    r = args.recipe
    if r is None:
        return (MODEL_WISE, WIDTHS, NOISES, SEEDS, 200), (EPOCH_WISE, 0.2, 1000)
    c = paper.run_config(r, args.data_dir, device_budget=args.device_budget)
    ew = next(p for p in r.extra_runs if p.get("epoch_wise"))
    return ((c.replace(log_every=c.steps), r.grid["k"], r.grid["noise"], r.seeds, r.epochs),
            (paper.run_config(r, args.data_dir, ew, device_budget=args.device_budget),
             ew["noise"], r.epochs))


def main(argv=None):
    args = paper.at_scale(__file__, argv, __doc__)
    if args is None:
        return
    data, figure = paper.outputs(args, ROOT / "figures", NAME)
    (mw, widths, noises, seeds, epochs), (ew, ew_noise, ew_epochs) = configure(args)
    res, wall = timed(deep_model_wise, mw, widths, noises, seeds, progress=print)
    save_results(data, "double_descent_width", {**mw.to_dict(), "widths": widths,
                 "noises": noises, "seeds": seeds, "epochs": epochs}, res, wall)
    print(f"model-wise: {wall:.0f} s")
    res2, wall2 = timed(deep_epoch_wise, ew, ew_noise)
    save_results(data, "double_descent_epoch", {**ew.to_dict(), "noise": ew_noise,
                 "epochs": ew_epochs}, res2, wall2)
    paper.record(args, data)
    best = min(range(len(res2["test_error"])), key=lambda i: res2["test_error"][i])
    print(f"epoch-wise: best test error {res2['test_error'][best]:.3f} at epoch "
          f"{res2['epoch'][best]:g}, final {res2['test_error'][-1]:.3f}; {wall2:.0f} s")
    render_double_descent(data, figure)


if __name__ == "__main__":
    main()
