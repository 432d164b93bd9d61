"""Rank correlation of generalization measures with the generalization gap (Jiang et al. 2020 §2–3).

Over a table of finished runs (one row per trained model: its hyper-parameters, its measures and
its gap) this module computes Kendall's τ over all pairs of runs, the granulated Ψ that only
compares runs differing in one hyper-parameter, and percentile-bootstrap confidence intervals over
runs. Plain numpy/pandas: it reads finished numbers and never touches a model.

NaN policy (everywhere): a run whose measure or gap is NaN (a measure that could not be computed,
JSON ``null``) is dropped from that measure's statistics; ``rank_measures`` reports how many were
dropped. ±inf values are kept and ordered (inf ties with inf).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._optional import require

pd = require("pandas", "plot", "sgdreg.correlation")

Runs = pd.DataFrame | Sequence[dict[str, Any]]


def _frame(runs: Runs) -> pd.DataFrame:
    return runs if isinstance(runs, pd.DataFrame) else pd.DataFrame(list(runs))


def _numeric(values) -> np.ndarray:
    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)


def _sign_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sign(a_i − b_j) as an outer table; comparisons (not subtraction) so inf ties with inf."""
    return (a[:, None] > b[None, :]).astype(np.int8) - (a[:, None] < b[None, :]).astype(np.int8)


def kendall_tau(measure, gap, *, row_chunk: int = 1024) -> float:
    """τ = (2/(n(n−1))) Σ_{i<j} sign(μ_i−μ_j)·sign(g_i−g_j) (Jiang et al. 2020, eq. 2).

    This is Kendall's τ_a: a pair tied in either variable contributes 0 and still counts in the
    denominator. Runs with a missing measure or gap (NaN, None, anything not numeric) are
    dropped; fewer than 2 runs left gives NaN. The one Kendall τ of sgdreg (the IGR trends use
    it too).
    """
    m, g = _numeric(measure), _numeric(gap)
    if m.shape != g.shape:
        raise ValueError(f"measure and gap differ in length: {m.size} vs {g.size}")
    keep = ~(np.isnan(m) | np.isnan(g))
    m, g = m[keep], g[keep]
    n = m.size
    if n < 2:
        return float("nan")
    total = 0
    for s in range(0, n, row_chunk):  # bounded memory: row_chunk × n sign tables
        sm = _sign_diff(m[s : s + row_chunk], m)
        sg = _sign_diff(g[s : s + row_chunk], g)
        total += int(np.sum(sm.astype(np.int64) * sg))
    return total / (n * (n - 1))  # every unordered pair was counted twice


def granulated_psi(
    runs: Runs, measure: str, gap: str, hyperparams: Sequence[str],
    group_by: Sequence[str] = (),
) -> tuple[float, dict[str, float]]:
    """Ψ = mean_i ψ_i, ψ_i = mean over groups of τ within the group (Jiang et al. 2020, eq. 4).

    A group for hyper-parameter i is a set of runs whose other hyper-parameters and
    ``group_by`` columns (e.g. the seed: runs compared for ψ_i then differ in i only) are all
    equal. It is used when it has ≥ 2 runs with a defined τ and ≥ 2 distinct values of i (a
    group of pure repeats says nothing about i). A hyper-parameter with no usable group gets
    ψ_i = NaN in the returned dict and is left out of Ψ; Ψ is NaN when every ψ_i is.
    """
    df = _frame(runs)
    missing = [c for c in [measure, gap, *hyperparams, *group_by] if c not in df.columns]
    if missing:
        raise KeyError(f"runs have no column(s) {', '.join(missing)}")
    psi_i: dict[str, float] = {}
    for hp in hyperparams:
        others = [h for h in [*hyperparams, *group_by] if h != hp]
        groups = df.groupby(others, dropna=False, sort=False) if others else [(None, df)]
        taus = []
        for _, grp in groups:
            if len(grp) < 2 or grp[hp].nunique(dropna=False) < 2:
                continue
            tau = kendall_tau(grp[measure], grp[gap])
            if not np.isnan(tau):
                taus.append(tau)
        psi_i[hp] = float(np.mean(taus)) if taus else float("nan")
    valid = [v for v in psi_i.values() if not np.isnan(v)]
    return (float(np.mean(valid)) if valid else float("nan")), psi_i


def resample_indices(n: int, num_resamples: int, seed: int) -> np.ndarray:
    """(num_resamples, n) run indices drawn with replacement (the bootstrap resamples)."""
    return np.random.default_rng(seed).integers(0, n, size=(num_resamples, n))


def percentile_ci(stats: np.ndarray, level: float) -> tuple[float, float]:
    """The (1∓level)/2 percentiles of the non-NaN ``stats`` (NaN, NaN if there are none)."""
    stats = stats[~np.isnan(stats)]
    if stats.size == 0:
        return float("nan"), float("nan")
    tail = 50.0 * (1.0 - level)
    lo, hi = np.percentile(stats, [tail, 100.0 - tail])
    return float(lo), float(hi)


def bootstrap_ci(
    runs: Runs,
    statistic_fn: Callable[[Any], float],
    num_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI: resample the n runs with replacement; (1∓level)/2 quantiles.

    ``statistic_fn`` gets a resampled table of the same kind as ``runs`` (DataFrame with a fresh
    index, or list of dicts); NaN statistics are ignored. Not for τ_a: a resample's copies of one
    run would count as tied pairs and pull τ toward 0 (τ = 1 data gave [0.75, 0.96] at 8 runs);
    ``tau_bootstrap`` leaves them out.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    n = len(runs)
    if n == 0:
        return float("nan"), float("nan")
    stats = []
    for idx in resample_indices(n, num_resamples, seed):
        if isinstance(runs, pd.DataFrame):
            sample = runs.iloc[idx].reset_index(drop=True)
        else:
            sample = [runs[i] for i in idx]
        stats.append(float(statistic_fn(sample)))
    return percentile_ci(np.asarray(stats, dtype=np.float64), level)


def _resample_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """(resamples, n): how often each run appears in each resample ``idx[i]``."""
    counts = np.zeros((len(idx), n))
    np.add.at(counts, (np.repeat(np.arange(len(idx)), n), np.asarray(idx).reshape(-1)), 1.0)
    return counts


def tau_bootstrap(measure, gap, idx: np.ndarray, *, row_chunk: int = 1024) -> np.ndarray:
    """τ_a of every resample of runs ``idx[i]``, leaving out the pairs of copies of one run.

    With counts c_r of run r in a resample and S_rs = sign(μ_r−μ_s)·sign(g_r−g_s):
    τ = cᵀSc/(m² − Σc²), m = Σc over runs with a measure and gap: the mean of S over ordered
    pairs of resampled runs that are not copies of one run (as ``psi_bootstrap`` does within
    a group). Counting copies as ties instead would bias every resampled τ toward 0, so the
    interval could exclude τ itself. With every c_r = 1 this is ``kendall_tau``; NaN for a
    resample with fewer than 2 distinct usable runs.
    """
    m, g = _numeric(measure), _numeric(gap)
    if m.shape != g.shape:
        raise ValueError(f"measure and gap differ in length: {m.size} vs {g.size}")
    ok = ~(np.isnan(m) | np.isnan(g))
    c = _resample_counts(idx, m.size)[:, ok] if len(idx) else np.zeros((0, int(ok.sum())))
    m, g = m[ok], g[ok]
    num = np.zeros(len(c))
    for s in range(0, m.size, row_chunk):  # bounded memory: row_chunk × n sign tables
        sl = slice(s, s + row_chunk)
        table = (_sign_diff(m[sl], m) * _sign_diff(g[sl], g)).astype(np.float64)
        num += np.einsum("rg,rg->r", c[:, sl], c @ table.T)
    pairs = c.sum(1) ** 2 - (c**2).sum(1)
    return np.where(pairs > 0, num / np.maximum(pairs, 1.0), np.nan)


def psi_bootstrap(df: pd.DataFrame, measure: str, gap: str, hps: Sequence[str],
                  group_by: Sequence[str], idx: np.ndarray) -> np.ndarray:
    """Ψ over ``hps`` (groups: runs equal in the other hyper-parameters and ``group_by``) for
    every resample of runs ``idx[i]``, without building the resampled tables.

    A resample gives each run a count c_r. Within a group G, τ_G is the mean of
    sign(μ_r−μ_s)·sign(g_r−g_s) over the pairs of resampled runs that are not copies of one run:
    τ_G = cᵀSc/(m² − Σc²), m = Σ_G c over runs with a measure and gap. Copies are left out
    rather than counted as ties: with the few runs per group of a grid (two, for two values
    and nothing else varying), ties would pull every resampled τ_G toward 0 (a group sampled
    as (2, 1) would give ⅔τ) and the CI would miss Ψ. With every c_r = 1 this is
    ``granulated_psi``. A group is used when its resampled runs show ≥ 2 values of the
    hyper-parameter and ≥ 2 distinct runs have a measure and gap.
    """
    n = len(df)
    counts = _resample_counts(idx, n)
    m = pd.to_numeric(df[measure], errors="coerce").to_numpy(float)
    g = pd.to_numeric(df[gap], errors="coerce").to_numpy(float)
    ok = ~(np.isnan(m) | np.isnan(g))
    s = np.where(ok[:, None] & ok[None, :],
                 _sign_diff(m0 := np.nan_to_num(m), m0) * _sign_diff(g0 := np.nan_to_num(g), g0), 0.0)
    valid_counts = counts * ok
    psi = np.full((len(idx), len(hps)), np.nan)
    keys = [*hps, *group_by]
    for j, hp in enumerate(hps):
        others = [k for k in keys if k != hp]
        groups = (df.groupby(others, dropna=False, sort=False).indices.values() if others
                  else [np.arange(n)])
        codes = pd.factorize(df[hp].astype(str), use_na_sentinel=False)[0]
        total, used = np.zeros(len(idx)), np.zeros(len(idx))
        for members in groups:
            c, cv = counts[:, members], valid_counts[:, members]
            values = np.stack([c[:, codes[members] == u].sum(1) > 0
                               for u in np.unique(codes[members])], 1).sum(1)
            pairs = cv.sum(1) ** 2 - (cv**2).sum(1)  # ordered pairs of distinct runs
            num = np.einsum("rg,gh,rh->r", cv, s[np.ix_(members, members)], cv)
            use = (values >= 2) & (pairs > 0)
            total += np.where(use, num / np.maximum(pairs, 1), 0.0)
            used += use
        psi[:, j] = np.where(used > 0, total / np.maximum(used, 1), np.nan)
    valid = ~np.isnan(psi)
    return np.where(valid.any(1), np.nansum(psi, 1) / np.maximum(valid.sum(1), 1), np.nan)


def rank_measures(
    runs: Runs,
    measures: Sequence[str],
    gap: str = "gen_gap",
    hyperparams: Sequence[str] | None = None,
    num_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    group_by: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per measure: τ and Ψ with their bootstrap CIs, ψ_i, run counts; sorted by |τ|.

    Rows are sorted by |τ| descending (NaN last): the strength of the association; the sign says
    its direction (a complexity measure should have τ > 0, a flatness radius such as σ τ < 0).
    Every measure is bootstrapped on the same resamples of runs (``resample_indices``), τ by
    ``tau_bootstrap`` and Ψ by ``psi_bootstrap`` (copies of a run left out of both). Ψ's groups
    hold ``hyperparams`` other than i and ``group_by`` equal; ``group_by=None`` means ["seed"]
    when ``runs`` has a seed column that varies and is not a hyper-parameter, so runs that
    differ only by their seed are never compared for ψ_i. Keys: ``measure``, ``tau``,
    ``tau_ci`` ([lo, hi]), ``psi``, ``psi_ci``, ``psi_per_hp``, ``n_runs`` (runs used),
    ``n_dropped`` (NaN). Values are Python floats and may be NaN; writers turn them into JSON
    null.
    """
    df = _frame(runs)
    hps = list(hyperparams or [])
    if group_by is None:
        group_by = ["seed"] if ("seed" in df.columns and "seed" not in hps
                                and df["seed"].nunique(dropna=False) > 1) else []
    missing = [c for c in [gap, *measures, *hps, *group_by] if c not in df.columns]
    if missing:
        raise KeyError(f"runs have no column(s) {', '.join(missing)}")
    g_all = _numeric(df[gap])
    idx = resample_indices(len(df), num_resamples, seed) if len(df) else np.zeros((0, 0), int)
    rows = []
    for name in measures:
        m_all = _numeric(df[name])
        used = int(np.sum(~(np.isnan(m_all) | np.isnan(g_all))))
        if hps:
            psi, psi_per_hp = granulated_psi(df, name, gap, hps, group_by)
            boot_psi = psi_bootstrap(df, name, gap, hps, group_by, idx) if len(idx) else \
                np.zeros(0)
            psi_ci = list(percentile_ci(boot_psi, level))
        else:
            psi, psi_per_hp, psi_ci = float("nan"), {}, [float("nan"), float("nan")]
        rows.append({
            "measure": name,
            "tau": kendall_tau(m_all, g_all),
            "tau_ci": list(percentile_ci(tau_bootstrap(m_all, g_all, idx), level)),
            "psi": psi,
            "psi_ci": psi_ci,
            "psi_per_hp": psi_per_hp,
            "n_runs": used,
            "n_dropped": len(df) - used,
        })
    return sorted(rows, key=lambda r: (np.isnan(r["tau"]), -abs(np.nan_to_num(r["tau"]))))
