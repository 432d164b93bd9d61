"""A run report: one self-contained HTML page for a run directory (``compare``/``train``
output) or a sweep directory, openable offline.

The page holds, in this order: a summary table (one row per run: optimizer, lr, batch size,
seed, status, steps, final train/test loss and accuracy, the generalization gap
test L − train L, wall time, a relative link to the run's trace), the figures found in the
directory (PNG/SVG, embedded as base64 ``data:`` URIs) and a plot of the traces' metrics made
here with matplotlib (when installed), the configuration (fields shared by all runs, then the
fields that differ), and the provenance each trace records (versions, device, writer host and
times, model and data hashes, the sweep index, logger adapters). No external CSS, script, font
or image: nothing is fetched when the page opens.

Example: ``sgdreg.report.write_report("sgdreg-runs/compare-x")`` → ``.../report.html``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .errors import TraceError
from .trace import atomic_write_text, find_traces, last_value

FULL_BATCH = ("gd", "flow", "modified-flow", "central-flow")  # = config.FULL_BATCH (no jax import)

IMAGE_TYPES = {".png": "image/png", ".svg": "image/svg+xml"}
MAX_RUNS_PLOTTED = 24  # beyond this the on-the-fly plot shows the first 24 runs (legend size)
PLOT_METRICS = (("train_loss", "train loss", True), ("test_loss", "test loss", True),
                ("train_acc", "train accuracy", False), ("test_acc", "test accuracy", False),
                ("lambda_max", "λ_max (sharpness)", False), ("hessian_trace", "tr H", False))
TABLE = (("optimizer", "optimizer"), ("lr", "lr"), ("batch_size", "batch"), ("seed", "seed"),
         ("status", "status"), ("steps", "steps"), ("train_loss", "train L"),
         ("test_loss", "test L"), ("train_acc", "train acc"), ("test_acc", "test acc"),
         ("gen_gap", "gap (test L − train L)"), ("wall_time_s", "wall s"))

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
margin:24px auto;max-width:1150px;color:#1d2329;line-height:1.4;padding:0 16px}
h1{font-size:1.6em;margin-bottom:0}h2{border-bottom:1px solid #ccd;padding-bottom:4px;margin-top:32px}
.sub{color:#5a6470;margin-top:4px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #d5d9de;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#eef1f4}td.l,th.l{text-align:left}
tr:nth-child(even) td{background:#f8f9fa}
.completed{color:#18794e}.diverged,.failed{color:#c0392b;font-weight:600}
.interrupted,.running{color:#b36b00;font-weight:600}
figure{margin:16px 0}figure img{max-width:100%;border:1px solid #e3e6ea}
figcaption{color:#5a6470;font-size:13px}
pre{background:#f4f6f8;padding:8px;overflow-x:auto;font-size:12px}
details{margin:6px 0}summary{cursor:pointer}
"""


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _final(doc: dict, key: str) -> Any:
    """The summary's value of ``key``, else the last non-null value of its metric column."""
    s = doc.get("summary") or {}
    if s.get(key) is not None:
        return s[key]
    return last_value((doc.get("metrics") or {}).get(key))


def run_row(doc: dict) -> dict[str, Any]:
    """One summary-table row of a trace (values as recorded; the gap = test L − train L when
    the trace does not hold ``gen_gap``)."""
    cfg = doc.get("config") or {}
    steps = doc["metrics"].get("step") or []
    row = {"run_id": doc.get("run_id"), "optimizer": cfg.get("optimizer"), "lr": cfg.get("lr"),
           "batch_size": cfg.get("batch_size"), "seed": doc.get("seed"),
           "status": doc.get("status"), "steps": steps[-1] if steps else 0,
           "wall_time_s": doc.get("wall_time_s")}
    dyn = (doc.get("provenance") or {}).get("dynamics")
    if isinstance(dyn, dict) and "batch_size" in dyn:  # what the run used (API runs)
        row["batch_size"] = dyn["batch_size"] if dyn["batch_size"] is not None else "full"
    elif cfg.get("optimizer") in FULL_BATCH:  # a preset without minibatches
        row["batch_size"] = "full"
    for k in ("train_loss", "test_loss", "train_acc", "test_acc", "gen_gap"):
        row[k] = _final(doc, k)
    if row["gen_gap"] is None and row["train_loss"] is not None and row["test_loss"] is not None:
        row["gen_gap"] = row["test_loss"] - row["train_loss"]
    return row


def find_figures(directory: Path) -> list[Path]:
    """PNG/SVG files directly in ``directory`` and in its ``figures/`` folder, sorted; of a
    figure saved as both, the PNG."""
    found: list[Path] = []
    for d in (directory, directory / "figures"):
        if d.is_dir():
            found += sorted(p for p in d.iterdir()
                            if p.is_file() and p.suffix.lower() in IMAGE_TYPES)
    pngs = {p.with_suffix("") for p in found if p.suffix.lower() == ".png"}
    return [p for p in found if p.suffix.lower() == ".png" or p.with_suffix("") not in pngs]


def metrics_plot(docs: list[dict]) -> bytes | None:
    """A PNG of the traces' main metrics against the step (one panel per metric present, one
    line per run); None when matplotlib is not installed or no metric is present."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    docs = docs[:MAX_RUNS_PLOTTED]
    panels = [(k, title, log) for k, title, log in PLOT_METRICS
              if any(any(v is not None for v in d["metrics"].get(k, [])) for d in docs)]
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    height = 3.0 * rows + 0.6  # room for the legend below the panels
    fig = Figure(figsize=(4.2 * cols, height), dpi=90)
    fig.subplots_adjust(left=0.07, right=0.98, top=1 - 0.35 / height, bottom=0.8 / height,
                        wspace=0.28, hspace=0.45)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (key, title, log) in zip(axes, panels):
        for d in docs:
            pts = [(s, v) for s, v in zip(d["metrics"]["step"], d["metrics"].get(key, []))
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=d.get("run_id"), lw=1.4, marker="." if len(xs) < 30 else None)
        if log and all(y > 0 for ln in ax.get_lines() for y in ln.get_ydata()):
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", fontsize=8,
                   ncols=min(4, len(labels)), frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _table(headers: list[str], rows: list[list[str]], left: int = 1) -> str:
    """HTML table; cells are already HTML; the first ``left`` columns left-aligned."""
    th = "".join(f'<th class="{"l" if i < left else ""}">{h}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>'
                                    for i, c in enumerate(r)) + "</tr>\n" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>\n{body}</tbody></table>"


def _split_config(docs: list[dict]) -> tuple[dict, list[str]]:
    """(fields equal in every run's config, the names of the fields that differ)."""
    cfgs = [d.get("config") or {} for d in docs]
    keys = list(dict.fromkeys(k for c in cfgs for k in c))
    enc = lambda v: json.dumps(v, sort_keys=True)
    shared = {k: cfgs[0].get(k) for k in keys
              if all(k in c for c in cfgs) and len({enc(c.get(k)) for c in cfgs}) == 1}
    return shared, [k for k in keys if k not in shared]


def _href(path: Path, base: Path) -> str:
    rel = os.path.relpath(path.absolute(), base.absolute())
    return quote(Path(rel).as_posix())


def _provenance_rows(doc: dict) -> list[str]:
    w = doc.get("writer") or {}
    prov = doc.get("provenance") or {}
    model, data = prov.get("model") or {}, prov.get("data") or {}
    dev = doc.get("device") or {}
    logs = doc.get("loggers") or {}
    return [_e(doc.get("run_id")), _e(w.get("host", "–")), _e(w.get("started", "–")),
            _e(w.get("heartbeat", "–")),
            _e(f"{dev.get('platform', '?')} {dev.get('kind', '')} ×{dev.get('count', '?')}"
               if isinstance(dev, dict) and dev else "–"),
            _e(model.get("class", (doc.get("config") or {}).get("model", "–"))),
            _e(model.get("structure_hash", "–")), _e(data.get("hash", "–")),
            _e(", ".join(f"{k}: {v.get('status')}" for k, v in logs.items()
                         if isinstance(v, dict)) or "–")]


def report_html(directory: str | os.PathLike, out: str | os.PathLike | None = None, *,
                plot: bool = True) -> str:
    """The report page of ``directory`` (links relative to ``out``'s folder; default
    ``directory/report.html``); ``plot=False`` leaves out the metrics plot drawn here (the
    directory's own figures stay). TraceError when ``directory`` is missing or holds no valid
    sgdreg trace."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TraceError(f"{directory}: no such directory")
    out = Path(out) if out is not None else directory / "report.html"
    found = find_traces(directory)  # every trace, recursively; TraceError if none or invalid
    docs = [d for _, d in found]
    sweep_index = directory / "sweep.json"
    kind = "sweep" if sweep_index.is_file() else "runs"
    title = f"sgdreg report: {directory.absolute().name}"
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
             f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{_e(title)}</h1>",
             f'<p class="sub">{_e(kind)} directory <code>{_e(directory)}</code>: {len(docs)} '
             f"run{'s' if len(docs) != 1 else ''}; generated "
             f"{_e(time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()))} by sgdreg "
             f"{_e(_version())}</p>"]

    # summary table
    rows = []
    for path, doc in found:
        r = run_row(doc)
        status = _e(r["status"])
        link = f'<a href="{_href(path, out.parent)}">{_e(r["run_id"])}</a>'
        rows.append([link] + [f'<span class="{status}">{status}</span>' if k == "status"
                              else _e(_fmt(r[k])) for k, _ in TABLE])
    parts += ["<h2>Summary</h2>",
              _table(["run (trace)"] + [_e(label) for _, label in TABLE], rows, left=1)]
    details = [(d.get("run_id"), d.get("status_detail")) for d in docs if d.get("status_detail")]
    if details:
        parts.append("<ul>" + "".join(f"<li><b>{_e(r)}</b>: {_e(t)}</li>" for r, t in details)
                     + "</ul>")

    # figures
    figs = find_figures(directory)
    plot_off = not plot
    plot = metrics_plot(docs) if plot else None
    parts.append("<h2>Figures</h2>")
    for f in figs:
        uri = _data_uri(f.read_bytes(), IMAGE_TYPES[f.suffix.lower()])
        parts.append(f'<figure><img src="{uri}" alt="{_e(f.name)}">'
                     f"<figcaption>{_e(f.relative_to(directory).as_posix())}</figcaption></figure>")
    if plot is not None:
        more = (f" (the first {MAX_RUNS_PLOTTED} of {len(docs)} runs)"
                if len(docs) > MAX_RUNS_PLOTTED else "")
        parts.append(f'<figure><img src="{_data_uri(plot, "image/png")}" alt="metrics">'
                     f"<figcaption>The traces' metrics against the step, drawn for this report"
                     f"{_e(more)}.</figcaption></figure>")
    if not figs and plot is None and not plot_off:
        parts.append("<p>No figures in the directory, and matplotlib is not installed for a "
                     "plot of the traces (pip install 'sgdreg[plot]').</p>")

    # configuration
    shared, varying = _split_config(docs)
    pairs = [[_e(k), _e(_fmt(v))] for k, v in shared.items()]
    per = 3  # field/value pairs per table row: a compact block instead of a long list
    grid = [sum(pairs[i:i + per], []) + ["", ""] * (per - len(pairs[i:i + per]))
            for i in range(0, len(pairs), per)]
    parts += ["<h2>Configuration</h2>", "<h3>Shared by every run</h3>",
              _table(["field", "value"] * per, grid, 2 * per)]
    if varying:
        parts += ["<h3>Differing between runs</h3>",
                  _table(["run"] + [_e(k) for k in varying],
                         [[_e(d.get("run_id"))] + [_e(_fmt((d.get("config") or {}).get(k)))
                                                   for k in varying] for d in docs])]

    # provenance
    vers = [json.dumps(d.get("versions"), sort_keys=True) for d in docs]
    parts.append("<h2>Provenance</h2>")
    if len(set(vers)) == 1:
        parts.append(_table(["package", "version"], [[_e(k), _e(v)] for k, v in
                                                     (docs[0].get("versions") or {}).items()], 2))
    else:
        pk = list(dict.fromkeys(k for d in docs for k in (d.get("versions") or {})))
        parts.append(_table(["run"] + [_e(k) for k in pk],
                            [[_e(d.get("run_id"))] + [_e((d.get("versions") or {}).get(k, "–"))
                                                      for k in pk] for d in docs]))
    parts.append(_table(["run", "host", "started (UTC)", "last write", "device", "model",
                         "model structure hash", "data hash", "loggers"],
                        [_provenance_rows(d) for d in docs], left=9))
    ds = docs[0].get("dataset")
    if isinstance(ds, dict) and ds:
        parts += ["<h3>Dataset</h3>",
                  _table(["field", "value"], [[_e(k), _e(_fmt(v))] for k, v in ds.items()], 2)]
    if kind == "sweep":
        try:
            idx = json.loads(sweep_index.read_text(encoding="utf-8"))
            text = json.dumps(idx, indent=1, sort_keys=True, default=str)
        except (OSError, ValueError) as e:
            text = f"(unreadable: {e})"
        parts.append(f'<details><summary>Sweep index <a href="{_href(sweep_index, out.parent)}">'
                     f"sweep.json</a></summary><pre>{_e(text)}</pre></details>")
    parts.append("<h3>Each trace's header</h3>")
    for path, doc in found:
        head = {k: v for k, v in doc.items() if k != "metrics"}
        parts.append(f'<details><summary>{_e(doc.get("run_id"))} (<a href="'
                     f'{_href(path, out.parent)}">{_e(path.relative_to(directory).as_posix())}'
                     f"</a>)</summary><pre>{_e(json.dumps(head, indent=1, default=str))}</pre>"
                     "</details>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("sgdreg")
    except metadata.PackageNotFoundError:
        return "unknown"


def write_report(directory: str | os.PathLike, out: str | os.PathLike | None = None, *,
                 plot: bool = True) -> Path:
    """Write ``report_html(directory, out, plot=plot)`` to ``out`` (default
    ``directory/report.html``) atomically and return its path."""
    out = Path(out) if out is not None else Path(directory) / "report.html"
    text = report_html(directory, out, plot=plot)
    atomic_write_text(out, text)
    return out


__all__ = ["find_figures", "metrics_plot", "report_html", "run_row", "write_report"]
