"""The reproduced papers, one module each: a config in, a JSON-ready results dict out (stored
with ``sgdreg.results.save_results``); no plotting here (figures: ``sgdreg.plotting``).

* ``zhang`` — Zhang et al. 2017: randomization tests (Fig. 1), finite-sample expressivity (Thm 1).
* ``kernel`` — Zhang et al. 2017, §5: minimum-norm kernel interpolation, GD to the min-norm solution.
* ``double_descent`` — Belkin et al. 2019; Nakkiran et al. 2019: random features, width, epochs.
* ``eos`` — Cohen et al. 2021: the edge of stability.
* ``igr`` — Barrett & Dherin 2021; Smith et al. 2021: implicit gradient regularization.
* ``generalization`` — Jiang et al. 2020: generalization measures against the gap.
* ``label_noise`` — Blanc et al. 2020; Damian et al. 2021: label-noise SGD drifts to lower tr H.
* ``adam_sharpness`` — Cohen et al. 2022: Adam's preconditioned sharpness at (2+2β1)/((1−β1)h).
"""
