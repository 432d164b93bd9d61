"""Zhang et al. 2017, Fig. 1 (randomization tests) on scikit-learn digits, CPU in minutes.

Setup: one-hidden-layer ReLU MLP (width 128, the default MLP), SGD with momentum 0.9 (the
original optimizer), lr 0.05 without decay, batch 32, 100 epochs for every variant, 3 seeds.
Width 128 rather than Zhang's 512: at width 512 the fitting time saturates for p ≥ 0.4 and the
seed-to-seed spread (±10 epochs) hides the growth with p; lr 0.05 rather than 0.01 so random
labels fit well inside the budget.

    python experiments/zhang_randomization.py   →  figures/data/zhang_randomization/,
                                                   figures/zhang_randomization.png/.svg
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


def main(argv=None):
    if paper.at_scale(__file__, argv, __doc__) is None:
        return
    data = ROOT / "figures" / "data" / NAME
    res, wall = timed(randomization_test, CONFIG, CORRUPTIONS, INPUT_RANDOMIZATIONS, SEEDS,
                      progress=print)
    save_results(data, "randomization", {**CONFIG.to_dict(), "epochs": EPOCHS,
                 "corruptions": CORRUPTIONS, "inputs": INPUT_RANDOMIZATIONS, "seeds": SEEDS},
                 res, wall)
    for r in res["table"]:
        print(f"{r['variant']:>16}: fit {r['all_fit']}, steps {r['steps_to_fit']}, "
              f"relative {r['relative_time']}, test error {r['test_error']:.3f}")
    print(f"wall time {wall:.0f} s")
    render_randomization(data, ROOT / "figures" / f"{NAME}.png")


if __name__ == "__main__":
    main()
