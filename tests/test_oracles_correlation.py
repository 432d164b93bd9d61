"""Granulated Ψ leaves out groups of pure repeats (mutation testing, issue 17 item 1): a group
of runs that all share the value of hyper-parameter i says nothing about i (Jiang et al. 2020,
eq. 4), whatever its τ."""

import pandas as pd

from sgdreg import correlation


def test_granulated_psi_skips_groups_without_two_values_of_the_hyperparameter():
    runs = pd.DataFrame({
        "lr": [0.1, 0.2, 0.1, 0.1],
        "width": [1, 1, 2, 2],
        "measure": [1.0, 2.0, 3.0, 4.0],
        "gap": [2.0, 1.0, 3.0, 4.0],  # τ = −1 in the width-1 group, +1 among the repeats
    })
    psi, per = correlation.granulated_psi(runs, "measure", "gap", ["lr", "width"])
    # ψ_lr: the width-1 group only (the two width-2 runs share lr = 0.1: repeats, left out)
    assert per["lr"] == -1.0
    # ψ_width: the lr = 0.1 group (runs 0, 2, 3; every pair concordant); lr = 0.2 has one run
    assert per["width"] == 1.0
    assert psi == 0.0
