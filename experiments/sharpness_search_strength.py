"""How good are the flatness searches? (issue 17, item 4; ``sgdreg.flatness``)

``--sigma``: the PAC-Bayes σ over 16 keys (16 noise draws each) against its standard error
``pacbayes_sigma_se``. Measured: plain σ 0.1544, spread over keys 2.5 %, median se 2.5 %;
magnitude-aware σ' 0.5498, spread 4.8 %, median se 3.9 %.

Otherwise: the sharpness search (``flatness.sharpness_radius``).

The radius α of the worst-case sharpness measure (Jiang et al. 2020 §C.4) is found by bisection
on α around an inner maximisation: projected sign-gradient ascent from random starts. A weak
inner search under-estimates the worst drop, so it accepts too large an α. This script trains
one digits MLP (n = 256, width 32, GD lr 0.5, float64) to train loss ≤ 0.05 and prints α for
several (ascent steps × restarts), plain and magnitude-aware, for three keys: the defaults
(20 × 4) against the strongest (80 × 16). Measured (2026-11-30; numbers in the docstring of
``sharpness_radius``): plain 10×1 0.02533, 20×4 0.02363, 40×8 0.02314, 80×16 0.02278;
magnitude-aware 10×1 0.1345, 20×4 0.1247, 40×8 0.1235, 80×16 0.1211 (means over the keys).

    python experiments/sharpness_search_strength.py [STEPSxRESTARTS ...]   # default: all below
    python experiments/sharpness_search_strength.py --sigma
"""

import sys
import time

import jax
import numpy as np

from sgdreg.config import RunConfig
from sgdreg.flatness import pacbayes_sigma, pacbayes_sigma_se, sharpness_radius
from sgdreg.models import partition
from sgdreg.training import train

SETTINGS = ["10x1", "20x1", "10x4", "20x4", "40x8", "80x16"]


def sigma_spread(obj, params, x, y, keys=16):
    for mag in (False, True):
        sig, se = [], []
        for k in range(keys):
            key = jax.random.key(k)
            s = pacbayes_sigma(obj, params, x, y, key, num_samples=16, num_bisection=20,
                               magnitude_aware=mag)
            sig.append(float(s))
            se.append(float(pacbayes_sigma_se(obj, params, x, y, key, s, num_samples=16,
                                              magnitude_aware=mag)))
        sig, se = np.array(sig), np.array(se)
        sd = sig.std(ddof=1)
        print(f"magnitude_aware={mag}: σ mean {sig.mean():.4g}, sd over {keys} keys {sd:.3g} "
              f"({sd / sig.mean():.1%}); median se {np.median(se):.3g} "
              f"({np.median(se / sig):.1%})", flush=True)


def main(settings):
    jax.config.update("jax_enable_x64", True)
    cfg = RunConfig(dataset="digits", n_train=256, n_test=64, width=32, optimizer="gd", lr=0.5,
                    steps=400, log_every=50, stop_loss=0.05, dtype="float64")
    res = train(cfg)
    m = res.trace["metrics"]
    print(f"trained to train loss {m['train_loss'][-1]:.4f} at step {m['step'][-1]}")
    obj, params = res.setup.problem.objective, partition(res.model)[0]
    x, y = res.setup.data.x_train, res.setup.data.y_train
    if settings == ["--sigma"]:
        return sigma_spread(obj, params, x, y)
    for mag in (False, True):
        for s in settings:
            steps, restarts = map(int, s.split("x"))
            t = time.perf_counter()
            alpha = [float(sharpness_radius(obj, params, x, y, jax.random.key(k),
                                            num_steps=steps, num_restarts=restarts,
                                            magnitude_aware=mag, num_bisection=20))
                     for k in range(3)]
            print(f"magnitude_aware={mag} {steps:3d} steps × {restarts:2d} restarts: α = "
                  f"{np.round(alpha, 5)}, mean {np.mean(alpha):.5g} "
                  f"({time.perf_counter() - t:.1f} s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or SETTINGS)
