"""The HTML report: self-contained, every figure embedded, broken figures become notes."""
from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from depthscope import report
from depthscope.experiments import FigureResult
from depthscope.store import Store, Value

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


class _Dummy:
    """Duck-typed experiment (not an Experiment subclass, so the real registry never sees it)."""

    presets = {"quick": {"n": 3}}

    def __init__(self, name, mode):
        self.name, self.mode = name, mode
        self.title = f"title of {name}"
        self.reproduces = "thesis Fig. 9.9"
        self.seen_params = None

    def figures(self, store, outdir, params):
        self.seen_params = params
        if self.mode == "raise":
            raise RuntimeError("boom while drawing")
        rows = store.rows(self.name, "y")
        if self.mode == "nopng":
            return [FigureResult(f"{self.name}a", "no png", [outdir / "missing.svg"], "cmd", "thesis", "v")]
        fig = Figure(figsize=(3, 2))
        ax = fig.add_subplot()
        ax.plot([r["layer"] for r in rows], [r["value"] for r in rows], "o-")
        paths = report.save_figure(fig, outdir, self.name)
        return [FigureResult(f"{self.name}a", f"plot of {self.name} <&>", paths,
                             f"depthscope reproduce {self.name}", self.reproduces,
                             f"{len(rows)} points, slope positive", caption="a caption", agrees=self.mode == "ok")]


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    exps = {n: _Dummy(n, m) for n, m in [("exp-ok", "ok"), ("exp-differs", "differs"), ("exp-raise", "raise"),
                                          ("exp-nopng", "nopng"), ("exp-empty", "ok")]}
    monkeypatch.setattr(report, "registry", lambda: exps)
    with Store(tmp_path) as st:
        for name in ["exp-ok", "exp-differs", "exp-raise", "exp-nopng", "orphan-exp"]:
            st.record(name, "k1", spec={"a": 1}, seed=0, values=[Value("y", float(i), layer=i) for i in range(1, 4)])
        st.record("exp-ok", "k2", spec={"a": 2}, seed=1, values=[], status="failed", reason="diverged")
        st.set_meta("params:exp-ok", {"preset": "paper", "params": {"n": 99}})
    return tmp_path, exps


def test_report_embeds_every_figure_and_notes_failures(run_dir):
    path, exps = run_dir
    out = report.write_report(path, quiet=True)
    assert out == path / "report.html"
    text = out.read_text()
    # params come from the store's meta, else the quick preset
    assert exps["exp-ok"].seen_params == {"n": 99} and exps["exp-differs"].seen_params == {"n": 3}
    assert "exp-empty" not in text  # nothing stored: no section
    imgs = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(imgs) == 2
    for b in imgs:
        assert base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n"
    assert (path / "figures" / "exp-ok.svg").is_file() and (path / "figures" / "exp-ok.png").is_file()
    assert "boom while drawing" in text and "no PNG file was produced" in text
    assert "orphan-exp" in text and "no module defines it" in text
    assert "depthscope reproduce exp-ok" in text and "3 points, slope positive" in text
    assert "plot of exp-ok &lt;&amp;&gt;" in text  # escaped
    assert 'class="verdict agree"' in text and 'class="verdict differ"' in text
    assert re.search(r"Agrees \(1\)", text) and re.search(r"Differs \(1\)", text)
    # self-contained: nothing fetched from elsewhere
    assert not re.search(r'(src|href)="(https?:)?//', text) and "<script" not in text
    row = re.search(r"<tr><td><a href=\"#exp-ok\">.*?</tr>", text, re.S).group(0)
    assert "<td>1</td><td>1</td>" in row  # 1 done, 1 failed


def test_report_on_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results store"):
        report.write_report(tmp_path / "nothing")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_report_loads_in_headless_chromium(run_dir, tmp_path):
    path, _ = run_dir
    html = report.write_report(path, quiet=True).read_text()
    # A probe copy: after load, write each image's naturalWidth into the DOM for --dump-dom to show.
    probe = ("<script>window.addEventListener('load',()=>{for(const i of document.images)"
             "{i.setAttribute('data-natural-width',String(i.naturalWidth));}"
             "document.body.setAttribute('data-probed','1');});</script>")
    probe_path = path / "probe.html"
    probe_path.write_text(html.replace("</body>", probe + "</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-extensions", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'chrome-profile'}", "--virtual-time-budget=5000", "--dump-dom",
           probe_path.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    dom = res.stdout
    assert 'data-probed="1"' in dom, res.stderr[-2000:]
    widths = re.findall(r'data-natural-width="(\d+)"', dom)
    assert len(widths) == 2 and all(int(w) > 0 for w in widths), widths
