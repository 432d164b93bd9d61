"""`sgdreg report` (issue 15): one self-contained HTML page per run or sweep directory. The
fast tests check the HTML itself (nothing external, a row per run with the trace's values,
embedded images that decode, relative links that resolve); the ``browser`` test renders it in
headless Chromium and checks the screenshot."""

import base64
import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from sgdreg_cli.main import main

from sgdreg.report import run_row, write_report
from sgdreg.trace import load_trace

ROOT = Path(__file__).resolve().parents[1]
COMPARE = ROOT / "figures" / "data" / "compare_default" / "seed0"  # a stored `sgdreg compare` run
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "cmp"
    shutil.copytree(COMPARE, d)
    return d


def cells(row_html: str) -> list[str]:
    return [html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>",
                                                                         row_html)]


def check_self_contained(text: str) -> list[bytes]:
    """No URL that would be fetched (every src/href is a data: URI or a relative link; no
    @import, url() or <script>/<link>), and every embedded image decodes; returns the images."""
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?\s*(?:https?:)?//", text, re.I)
    assert not re.search(r"<script|<link|@import|url\(", text, re.I)
    images = []
    for mime, b64 in re.findall(r'src="data:(image/[a-z+]+);base64,([A-Za-z0-9+/=]+)"', text):
        data = base64.b64decode(b64, validate=True)
        assert data[:8] == b"\x89PNG\r\n\x1a\n" if mime == "image/png" else b"<svg" in data[:4000]
        images.append(data)
    assert len(re.findall(r"<img ", text)) == len(images)
    return images


def test_report_of_a_compare_directory_is_self_contained_with_a_row_per_run(run_dir):
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    text = path.read_text(encoding="utf-8")
    images = check_self_contained(text)
    # the stored compare.png, byte for byte, and the metrics plot drawn for the report
    assert images[0] == (run_dir / "compare.png").read_bytes() and len(images) == 2
    import io

    import matplotlib.image as mpimg

    plot = mpimg.imread(io.BytesIO(images[1]), format="png")
    assert plot.shape[0] > 200 and plot.shape[1] > 600 and plot.std() > 0.01  # not blank
    body = text.split("<h2>Summary</h2>")[1].split("</table>")[0]
    rows = re.findall(r"<tr>(.*?)</tr>", body.split("<tbody>")[1], re.S)
    traces = sorted(run_dir.glob("*.json"))
    traces = [p for p in traces if p.name != "summary.json"]
    assert len(rows) == len(traces) == 2
    for row, path in zip(rows, traces):
        doc = load_trace(path)
        c = cells(row)
        s = doc["summary"]
        assert c[0] == doc["run_id"] and c[1] == doc["config"]["optimizer"]
        assert c[5] == "completed" and int(c[6]) == doc["metrics"]["step"][-1] == 3000
        want = [s["train_loss"], s["test_loss"], s["train_acc"], s["test_acc"], s["gen_gap"]]
        np.testing.assert_allclose([float(x) for x in c[7:12]], want, rtol=5e-4)
        # the link is relative and resolves to the trace
        href = re.search(r'href="([^"]+)"', row).group(1)
        assert not href.startswith("/") and (path.parent / href).resolve() == path.resolve()
    assert [cells(r)[3] for r in rows] == ["full", "16"]  # GD: full batch
    # configuration and provenance from the traces
    assert "<h3>Differing between runs</h3>" in text and ">optimizer</th>" in text
    doc = load_trace(traces[0])
    assert doc["provenance"]["model"]["structure_hash"] in text
    assert doc["provenance"]["data"]["hash"] in text
    assert f'<td class="l">jax</td><td class="l">{doc["versions"]["jax"]}</td>' in text


def test_report_out_elsewhere_links_back_and_a_sweep_index_is_shown(run_dir, tmp_path):
    (run_dir / "traces").mkdir()
    for p in run_dir.glob("*_s0.json"):
        p.rename(run_dir / "traces" / p.name)
    (run_dir / "sweep.json").write_text(json.dumps({"name": "tiny-grid", "runs": 2}))
    out = tmp_path / "elsewhere" / "r.html"
    write_report(run_dir, out, plot=False)
    text = out.read_text(encoding="utf-8")
    check_self_contained(text)
    assert "sweep directory" in text and "tiny-grid" in text
    hrefs = re.findall(r'href="([^"]+)"', text)
    assert hrefs and all((out.parent / h).resolve().is_file() for h in hrefs)
    assert any(h.endswith("traces/gd_lr0.1_s0.json") for h in hrefs)


def test_run_row_falls_back_to_the_last_logged_values():
    doc = {"run_id": "r", "config": {"optimizer": "sgd", "lr": 0.05, "batch_size": 8},
           "seed": 3, "status": "diverged", "summary": {},
           "metrics": {"step": [0, 10, 20], "train_loss": [1.0, 0.5, None],
                       "test_loss": [1.2, 0.9, None]}}
    r = run_row(doc)
    assert (r["train_loss"], r["test_loss"], r["steps"], r["batch_size"]) == (0.5, 0.9, 20, 8)
    assert r["gen_gap"] == pytest.approx(0.4) and r["train_acc"] is None


@pytest.mark.parametrize("case", ["missing", "file", "empty", "invalid", "out-is-dir",
                                  "out-under-file"])
def test_report_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, run_dir,
                                                                   case):
    before = sorted(p.name for p in run_dir.iterdir())
    args = {"missing": [str(tmp_path / "nope")],
            "file": [str(run_dir / "summary.json")],
            "empty": [str(tmp_path / "empty")],
            "invalid": [str(run_dir)],
            "out-is-dir": [str(run_dir), "--out", str(tmp_path)],
            "out-under-file": [str(run_dir), "--out", str(run_dir / "summary.json" / "r.html")]}
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.json").write_text("{}")
    if case == "invalid":
        (run_dir / "broken.json").write_text('{"schema": "sgdreg.trace/1", "run_id": 1}')
        before.append("broken.json")
    assert main(["report", *args[case]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("sgdreg: error: ") and "Traceback" not in err
    needle = {"missing": "no such directory", "file": "is a file", "empty": "no sgdreg traces",
              "invalid": "broken.json", "out-is-dir": "is a directory",
              "out-under-file": "is a file"}[case]
    assert needle in err
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(before)  # no report.html
    assert not list(tmp_path.rglob("*.html"))


def test_report_cli_writes_the_page(run_dir, capsys):
    assert main(["report", str(run_dir), "--no-plot"]) == 0
    assert (run_dir / "report.html").is_file()
    assert "report →" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.browser
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    page = write_report(run_dir)
    shot = tmp_path / "report.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", "--window-size=1200,2000", page.absolute().as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120,
                   env={**os.environ, "HOME": str(tmp_path)})
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.shape[:2] == (2000, 1200)
    rgb = img[..., :3]
    # rendered, not blank: mostly the white page, with text, table rules and the figures
    assert (rgb.mean(axis=2) > 0.97).mean() > 0.3
    assert rgb.std() > 0.1
    # the embedded figures rendered: colourful pixels (the plots' lines) in the page
    colourful = (rgb.max(axis=2) - rgb.min(axis=2)) > 0.3
    assert colourful.sum() > 2000
    keep = os.environ.get("SGDREG_REPORT_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
