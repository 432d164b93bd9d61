"""Double descent (docs/science.md#double-descent).

* ``rff_model_wise`` / ``rff_sample_wise`` — random Fourier features with the min-norm fit,
  swept in the number of features N (Belkin et al. 2019, "Reconciling modern machine-learning
  practice and the classical bias–variance trade-off") or in the number of samples n (Nakkiran
  et al. 2019, "Deep double descent").
* ``deep_model_wise`` / ``deep_epoch_wise`` — trained MLPs under label noise, swept in width or
  logged over training (Nakkiran et al. 2019).

The closed-form RFF fits are in ``sgdreg.double_descent``; the figure in
``sgdreg.plotting.double_descent``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..config import ConfigError, RunConfig, validate
from ..data import Dataset, subsample
from ..results import sig
from ._common import Progress, check_noise, say, trace_path


def rff_bandwidth(ds: Dataset) -> float:
    """σ = ½ · median pairwise distance of the train inputs: σ = 5 on MNIST pixels in [0,1]
    (median ≈ 10, Belkin et al. 2019), σ ≈ 1.5 on 8×8 digits in [0,1]."""
    from ..kernels import median_distance

    return 0.5 * median_distance(ds.x_train)


def _sigma(ds: Dataset, sigma: float | None) -> float:
    if sigma is not None and not sigma > 0:
        raise ConfigError(f"sigma must be > 0, got {sigma:g}")
    return rff_bandwidth(ds) if sigma is None else float(sigma)


def rff_model_wise(ds: Dataset, num_features: Sequence[int] | None = None,
                   seeds: Sequence[int] = (0, 1, 2), sigma: float | None = None) -> dict:
    """Model-wise double descent with random Fourier features (Belkin et al. 2019): min-norm
    a = Φ⁺Y for N swept through n; train error → 0 at N = n where test error and ‖a‖ peak.
    ``num_features`` defaults to ``feature_grid(n)`` (0.1n … 10n, 13 points). With N = n and
    N = 10n in the grid, ``ratio`` holds err(N = n)/err(N = 10n) per seed, the seeds' min–max
    and a test-image bootstrap interval (``double_descent.threshold_ratio``), else None."""
    from ..double_descent import feature_grid, mean_over_seeds, rff_double_descent, threshold_ratio

    grid = list(num_features) if num_features else feature_grid(ds.n_train)
    if min(grid) < 1 or not seeds:
        raise ConfigError("num_features must be ≥ 1 and seeds non-empty")
    sigma = _sigma(ds, sigma)
    n = ds.n_train
    rows = rff_double_descent(ds, grid, list(seeds), sigma=sigma, wrong_at=[n, 10 * n])
    ratio = threshold_ratio(rows, n) if {n, 10 * n} <= set(grid) and ds.num_classes else None
    return {"kind": "rff", "dataset": ds.name, "n": n, "sigma": sigma, "rows": rows,
            "mean": mean_over_seeds(rows), "ratio": ratio}


def rff_sample_wise(ds: Dataset, num_features: int, sample_sizes: Sequence[int] | None = None,
                    seeds: Sequence[int] = (0, 1, 2), sigma: float | None = None) -> dict:
    """Sample-wise double descent (Nakkiran et al. 2019) with N fixed random Fourier features:
    min-norm fits on the first n training points; test error peaks at n = N, where more data
    hurts. ``sample_sizes`` defaults to 0.1N … 10N (capped at the training set), with n = N."""
    from ..double_descent import feature_grid, rff_double_descent

    sizes = sorted(sample_sizes or [s for s in feature_grid(num_features) if s <= ds.n_train])
    if num_features < 1 or not sizes or sizes[0] < 1 or sizes[-1] > ds.n_train or not seeds:
        raise ConfigError(f"sample_sizes must lie in 1..{ds.n_train} and num_features be ≥ 1")
    sigma = _sigma(ds, sigma)
    rows = []
    for n in sizes:
        for r in rff_double_descent(subsample(ds, n_train=n), [num_features], list(seeds), sigma):
            rows.append(r)
    mean = [{"n": n, **{k: float(np.mean([r[k] for r in rows if r["n"] == n]))
                        for k in ("train_error", "test_error", "train_mse", "test_mse", "norm")}}
            for n in sizes]
    return {"kind": "samples", "N": num_features, "sigma": sigma, "rows": rows, "mean": mean}


def _noisy(cfg: RunConfig, noise: float) -> RunConfig:
    """Label noise as in Nakkiran et al. 2019: a fraction ``noise`` of train labels replaced by a
    uniform *incorrect* class (``randomization.label_corruption_incorrect``)."""
    if noise == 0:
        return cfg.replace(randomization="none", corruption=0.0)
    return cfg.replace(randomization="label-corruption-incorrect", corruption=noise)


def deep_model_wise(cfg: RunConfig, widths: Sequence[int], noises: Sequence[float] = (0.0, 0.1, 0.2),
                    seeds: Sequence[int] = (0,), trace_dir=None,
                    progress: Progress | None = None) -> dict:
    """Model-wise deep double descent (Nakkiran et al. 2019): an MLP of each width trained by
    ``cfg`` for a fixed budget under label noise; final train and test error per width. The peak
    is expected where the net just interpolates the noisy train set (#params ≈ n·K for a
    two-layer net, Belkin et al. 2019)."""
    from ..training import load_data, train

    check_noise(noises)
    if not widths or min(widths) < 1 or not seeds:
        raise ConfigError("widths must be ≥ 1 and seeds non-empty")
    validate(cfg)
    rows, k = [], None
    for noise in noises:
        for seed in seeds:
            c0 = _noisy(cfg, noise).replace(seed=seed)
            ds = load_data(c0)
            validate(c0, ds.n_train)
            k = ds.num_classes
            for w in widths:
                c = c0.replace(width=int(w))
                res = train(c, ds, trace_path=trace_path(trace_dir, f"w{w}_noise{noise:g}_s{seed}"))
                s = res.trace["summary"]
                rows.append({"width": int(w), "noise": float(noise), "seed": seed,
                             "num_params": res.trace["num_params"], "status": res.trace["status"],
                             "train_error": 1 - s["train_acc"], "test_error": 1 - s["test_acc"],
                             "train_loss": s["train_loss"], "test_loss": s["test_loss"]})
                say(progress, f"width {w}, noise {noise:g}, seed {seed}: test error "
                               f"{rows[-1]['test_error']:.3f}")
    return {"kind": "width", "n_train": ds.n_train, "num_classes": k,
            "interpolation_params": ds.n_train * k, "rows": rows}


def deep_epoch_wise(cfg: RunConfig, noise: float = 0.2, trace_path=None) -> dict:
    """Epoch-wise deep double descent (Nakkiran et al. 2019): train and test error of one large
    model under label noise, logged over training (``cfg.log_every`` steps apart)."""
    from ..training import load_data, train

    check_noise([noise])
    c = _noisy(cfg, noise)
    validate(c)
    ds = load_data(c)
    validate(c, ds.n_train)
    res = train(c, ds, trace_path=trace_path)
    m = res.trace["metrics"]
    epoch = [s / c.steps_per_epoch(ds.n_train) for s in m["step"]]
    return {"kind": "epoch", "noise": float(noise), "width": c.width, "n_train": ds.n_train,
            "num_params": res.trace["num_params"], "status": res.trace["status"], "epoch": epoch,
            **{k: [None if a is None else sig(1 - a, 5) for a in m[src]]
               for k, src in (("train_error", "train_acc"), ("test_error", "test_acc"))},
            "test_loss": [sig(v, 5) for v in m["test_loss"]]}


__all__ = ["deep_epoch_wise", "deep_model_wise", "rff_bandwidth", "rff_model_wise",
           "rff_sample_wise"]
