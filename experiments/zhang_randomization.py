"""Zhang et al. 2017, Fig. 1 (randomization tests) on scikit-learn digits, CPU in minutes.

Setup: one-hidden-layer ReLU MLP (width 128, the default MLP), SGD with momentum 0.9 (the
original optimizer), lr 0.05 without decay, batch 32, 100 epochs for every variant, 3 seeds.
Width 128 rather than Zhang's 512: at width 512 the fitting time saturates for p ≥ 0.4 and the
seed-to-seed spread (±10 epochs) hides the growth with p; lr 0.05 rather than 0.01 so random
labels fit well inside the budget.

    python experiments/zhang_randomization.py   →  figures/data/zhang_randomization/,
                                                   figures/zhang_randomization.png/.svg

``--scale paper --data-dir DIR``: the same tests on Zhang et al.'s setup (small Inception on
28×28 centre crops of CIFAR-10, SGD momentum 0.9, lr 0.1 × 0.95 per epoch, batch 128;
``paper.RECIPES["zhang_randomization"]``) into figures/data/zhang_randomization_paper/ and
figures/zhang_randomization_paper.png.
"""

from pathlib import Path

from sgdreg.config import RunConfig
from sgdreg.experiments import paper
from sgdreg.experiments.zhang import CORRUPTIONS, INPUT_RANDOMIZATIONS, randomization_test
from sgdreg.plotting.zhang import render_randomization
from sgdreg.results import save_results, timed

NAME = "zhang_randomization"
ROOT = Path(__file__).resolve().parents[1]
EPOCHS, STEPS_PER_EPOCH = 100, 1438 // 32  # digits: 1438 training examples
CONFIG = RunConfig(dataset="digits", model="mlp", width=128, depth=1, optimizer="momentum",
                   lr=0.05, momentum=0.9, batch_size=32, steps=EPOCHS * STEPS_PER_EPOCH,
                   log_every=STEPS_PER_EPOCH)
SEEDS = (0, 1, 2)


def configure(args):
    """(RunConfig, corruptions, input randomizations, seeds, epochs): the digits default, or at
    ``--scale paper`` the recipe's (its ``variant`` axis: corruption levels p, then inputs)."""
    r = args.recipe
    if r is None:
        return CONFIG, CORRUPTIONS, INPUT_RANDOMIZATIONS, SEEDS, EPOCHS
    variants = r.grid["variant"]
    return (paper.run_config(r, args.data_dir, device_budget=args.device_budget),
            tuple(float(v) for v in variants if not isinstance(v, str)),
            tuple(v for v in variants if isinstance(v, str)), r.seeds, r.epochs)


def main(argv=None):
    args = paper.at_scale(__file__, argv, __doc__)
    if args is None:
        return
    data, figure = paper.outputs(args, ROOT / "figures", NAME)
    cfg, corruptions, inputs, seeds, epochs = configure(args)
    res, wall = timed(randomization_test, cfg, corruptions, inputs, seeds, progress=print)
    save_results(data, "randomization", {**cfg.to_dict(), "epochs": epochs,
                 "corruptions": corruptions, "inputs": inputs, "seeds": seeds}, res, wall)
    paper.record(args, data)
    for r in res["table"]:
        print(f"{r['variant']:>16}: fit {r['all_fit']}, steps {r['steps_to_fit']}, "
              f"relative {r['relative_time']}, test error {r['test_error']:.3f}")
    print(f"wall time {wall:.0f} s")
    render_randomization(data, figure)


if __name__ == "__main__":
    main()
