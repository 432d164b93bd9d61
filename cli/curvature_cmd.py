"""`sgdreg hessian`: curvature of a saved model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import (
    UsageProblem,
    app,
    check_finite,
    check_int,
    console,
    emit_json,
    make_output,
    output_dir,
    print_table,
)

Opt = typer.Option


@app.command()
def hessian(
    checkpoint: Annotated[Path, typer.Argument(help="A .eqx file from `sgdreg train "
                                               "--save-checkpoint`.")],
    probes: Annotated[int, Opt("--probes", help="Hutchinson probes K.")] = 50,
    lanczos_steps: Annotated[int, Opt("--lanczos-steps", help="Lanczos steps for λ_max and the "
                                      "top-k eigenvalues.")] = 30,
    lambda_min_steps: Annotated[int | None, Opt(
        "--lambda-min-steps", help="At most this many Lanczos steps for λ_min; it stops once "
        "converged (default 500; 0: no λ_min).")] = None,
    lambda_min_tol: Annotated[float | None, Opt(
        "--lambda-min-tol", help="λ_min converged: Ritz residual ≤ tol·‖H‖ (default 1e-6).")]
    = None,
    top_k: Annotated[int, Opt("--top-k")] = 5,
    hessian_n: Annotated[int | None, Opt("--hessian-n", help="First n training examples.")]
    = None,
    slq_starts: Annotated[int, Opt("--slq-starts", help="Random starts n_v for SLQ.")] = 8,
    sigma: Annotated[float | None, Opt("--sigma", help="Density kernel std (default 1% of "
                                       "the spectrum's range).")] = None,
    seed: Annotated[int, Opt("--seed")] = 0,
    out: Annotated[Path | None, Opt("--out", help="Output directory (default "
                                    "sgdreg-runs/hessian-<time>).")] = None,
    overwrite: Annotated[bool, Opt("--overwrite", help="Write into a non-empty --out "
                                   "(curvature.json and density.png are replaced).")] = False,
    json: Annotated[bool, Opt("--json")] = False,
):
    """Hessian trace ± stderr (total and per layer), top-k and smallest eigenvalues with their
    Ritz residuals and converged flags, Γ and the spectral density of a saved model, on its own
    training data (re-loaded from the saved config). A Ritz value θ is converged when its
    residual ‖Hy − θy‖ ≤ tol·‖H‖; then an eigenvalue of H lies within the residual of θ.

    Example:

      sgdreg train --optimizer gd --steps 500 --save-checkpoint --out runs/gd

      sgdreg hessian runs/gd/gd_lr0.1_s0.eqx --probes 100
    """
    from sgdreg.checkpoint import load_model
    from sgdreg.config import validate
    from sgdreg.plotting.compare import spectral_density_figure
    from sgdreg.probes import measure_curvature
    from sgdreg.trace import atomic_write_json
    from sgdreg.training import load_data

    # every option, the output location and the checkpoint before anything is computed
    check_int("--probes", probes, 2)
    check_int("--lanczos-steps", lanczos_steps, 1)
    check_int("--top-k", top_k, 1, lanczos_steps)
    if lambda_min_steps is not None and lambda_min_steps < 0:
        raise UsageProblem(f"--lambda-min-steps must be ≥ 0 (0: no λ_min), got {lambda_min_steps}")
    check_int("--lambda-min-steps", lambda_min_steps, 0)
    check_finite("--lambda-min-tol", lambda_min_tol, 0)
    check_int("--hessian-n", hessian_n, 1)
    check_int("--slq-starts", slq_starts, 1)
    check_finite("--sigma", sigma, 0)
    check_int("--seed", seed, 0, 2**32 - 1)
    if not checkpoint.is_file():
        raise UsageProblem(f"{checkpoint}: no such checkpoint file")
    dest = output_dir(out, "hessian", overwrite=overwrite)
    model, cfg = load_model(checkpoint)
    model, state = model if isinstance(model, tuple) else (model, None)  # BatchNorm presets
    cfg = cfg.replace(probes=probes, lanczos_steps=lanczos_steps, top_k=top_k,
                      hessian_n=hessian_n, slq=True, hessian_every=cfg.log_every)
    validate(cfg)
    ds = load_data(cfg)
    validate(cfg, ds.n_train)  # --hessian-n ≤ n
    options = {k: v for k, v in (("lambda_min_max_steps", lambda_min_steps),
                                 ("lambda_min_tol", lambda_min_tol)) if v is not None}
    res = measure_curvature(model, cfg, ds, seed=seed, state=state, slq_starts=slq_starts,
                            **options)
    make_output(dest)
    files, used = spectral_density_figure(res["slq_nodes"], res["slq_weights"],
                                          dest / "density.png", sigma)
    res |= {"checkpoint": str(checkpoint), "density_sigma_std": used,
            "density_figure": str(files[0])}
    atomic_write_json(dest / "curvature.json", res)
    rows = [["tr H", f"{res['hessian_trace']:.5g} ± {res['hessian_trace_stderr']:.2g}"]]
    rows += [[f"  tr H[{name}]", f"{v:.5g} ± {se:.2g}"] for name, v, se in zip(
        res["layers"], res["layer_hessian_traces"], res["layer_hessian_traces_stderr"])]
    rows += [["λ_max", res["lambda_max"]],
             ["  residual, converged", f"{res['lambda_max_residual']:.2g}, "
              f"{res['lambda_max_converged']} ({lanczos_steps} Lanczos steps)"],
             ["top eigenvalues", ", ".join(f"{v:.4g}" for v in res["top_eigenvalues"])]]
    if "lambda_min" in res:  # --lambda-min-steps 0: not measured
        rows += [["λ_min", res["lambda_min"]],
                 ["  residual, converged", f"{res['lambda_min_residual']:.2g}, "
                  f"{res['lambda_min_converged']} ({res['lambda_min_steps']} Lanczos steps)"]]
    rows += [["λ_max·‖θ‖²", res["lambda_max_scaled"]],
             ["Γ (grad noise)", res["grad_var"]], ["EoS reference", res["eos_threshold"]]]
    if "batch_sharpness" in res:
        rows.append(["batch sharpness", f"{res['batch_sharpness']:.4g} ± "
                     f"{res['batch_sharpness_stderr']:.2g}"])
    print_table(f"curvature of {checkpoint.name}", ["quantity", "value"], rows)
    console.print(f"curvature.json and density.png in {dest}")
    if json:
        emit_json(res)
