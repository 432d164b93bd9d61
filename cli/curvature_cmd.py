"""`sgdreg hessian`: curvature of a saved model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app, console, emit_json, out_dir, print_table

Opt = typer.Option


@app.command()
def hessian(
    checkpoint: Annotated[Path, typer.Argument(help="A .eqx file from `sgdreg train "
                                               "--save-checkpoint`.")],
    probes: Annotated[int, Opt("--probes", help="Hutchinson probes K.")] = 50,
    lanczos_steps: Annotated[int, Opt("--lanczos-steps")] = 30,
    top_k: Annotated[int, Opt("--top-k")] = 5,
    hessian_n: Annotated[int | None, Opt("--hessian-n", help="First n training examples.")]
    = None,
    slq_starts: Annotated[int, Opt("--slq-starts", help="Random starts n_v for SLQ.")] = 8,
    sigma: Annotated[float | None, Opt("--sigma", help="Density kernel std (default 1% of "
                                       "the spectrum's range).")] = None,
    seed: Annotated[int, Opt("--seed")] = 0,
    out: Annotated[Path | None, Opt("--out")] = None,
    json: Annotated[bool, Opt("--json")] = False,
):
    """Hessian trace ± stderr, top-k and smallest eigenvalues, Γ and the spectral density of a
    saved model, on its own training data (re-loaded from the saved config).

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

    model, cfg = load_model(checkpoint)
    cfg = cfg.replace(probes=probes, lanczos_steps=lanczos_steps, top_k=top_k,
                      hessian_n=hessian_n, slq=True, hessian_every=cfg.log_every)
    validate(cfg)
    ds = load_data(cfg)
    dest = out_dir(out, "hessian")
    res = measure_curvature(model, cfg, ds, seed=seed, slq_starts=slq_starts)
    dest.mkdir(parents=True, exist_ok=True)
    files, used = spectral_density_figure(res["slq_nodes"], res["slq_weights"],
                                          dest / "density.png", sigma)
    res |= {"checkpoint": str(checkpoint), "density_sigma_std": used,
            "density_figure": str(files[0])}
    atomic_write_json(dest / "curvature.json", res)
    rows = [["tr H", f"{res['hessian_trace']:.5g} ± {res['hessian_trace_stderr']:.2g}"],
            ["λ_max", res["lambda_max"]], ["λ_max converged", res["lambda_max_converged"]],
            ["top eigenvalues", ", ".join(f"{v:.4g}" for v in res["top_eigenvalues"])],
            ["λ_min", res["lambda_min"]], ["λ_max·‖θ‖²", res["lambda_max_scaled"]],
            ["Γ (grad noise)", res["grad_var"]], ["EoS reference", res["eos_threshold"]]]
    if "batch_sharpness" in res:
        rows.append(["batch sharpness", f"{res['batch_sharpness']:.4g} ± "
                     f"{res['batch_sharpness_stderr']:.2g}"])
    print_table(f"curvature of {checkpoint.name}", ["quantity", "value"], rows)
    console.print(f"curvature.json and density.png in {dest}")
    if json:
        emit_json(res)
