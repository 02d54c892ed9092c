"""The HTML report: self-contained, every figure embedded, broken figures become notes."""
from __future__ import annotations

import base64
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from depthscope import report
from depthscope.experiments import FigureResult
from depthscope.experiments.base import VERDICTS, Claim
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
    # a bare agrees=True is a qualitative check (trend), never "values agree"
    assert 'class="verdict trend"' in text and 'class="verdict differ"' in text
    table = verdict_rows(text)
    assert [r["verdict"] for r in table] == ["trend", "differs", "not judged"]
    # self-contained: nothing fetched from elsewhere
    assert not re.search(r'(src|href)="(https?:)?//', text) and "<script" not in text
    row = re.search(r"<tr><td><a href=\"#exp-ok\">.*?</tr>", text, re.S).group(0)
    assert "<td>1</td><td>1</td>" in row  # 1 done, 1 failed


class _TableParser(HTMLParser):
    """Rows of <table class="verdicts">: each a dict of data-verdict and the cells' text."""

    def __init__(self):
        super().__init__()
        self.rows, self.header, self._in, self._row, self._cell = [], [], False, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "verdicts" in (a.get("class") or "").split():
            self._in = True
        elif self._in and tag == "tr":
            self._row = {"verdict": a.get("data-verdict"), "cells": []}
        elif self._in and tag in ("td", "th"):
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append(" ")

    def handle_endtag(self, tag):
        if not self._in:
            return
        if tag in ("td", "th") and self._cell is not None:
            self._row["cells"].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row["verdict"] is None:
                self.header = self._row["cells"]
            else:
                self.rows.append(self._row)
            self._row = None
        elif tag == "table":
            self._in = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def verdict_rows(text: str) -> list[dict]:
    """Parse report.html's verdict table; checks its header and that it comes before the summary."""
    p = _TableParser()
    p.feed(text)
    assert p.header == ["claim", "thesis value", "our value", "preset and scale", "verdict"]
    assert text.index('class="verdicts"') < text.index("<h2>Summary</h2>")
    for r in p.rows:
        assert len(r["cells"]) == 5
    return p.rows


class _Claims:
    """A duck-typed experiment whose one figure carries a claim of every verdict kind."""

    presets = {"quick": {}}
    title, reproduces = "claims", "thesis Fig. 1.1"

    def __init__(self, name):
        self.name = name

    def figures(self, store, outdir, params):
        fig = Figure(figsize=(2, 2))
        fig.add_subplot().plot([0, 1])
        claims = [Claim(f"claim {k}", f"thesis {k}", f"ours {k}", f"width {i}", k, f"why {k}")
                  for i, k in enumerate(VERDICTS)]
        return [FigureResult("figc", "t", report.save_figure(fig, outdir, "figc"), "cmd", "thesis Fig. 1.1", "v",
                             claims=claims)]


def test_verdict_table_has_one_row_per_claim_with_its_kind(tmp_path, monkeypatch):
    exps = {"claims": _Claims("claims"), "lacking": _Dummy("lacking", "ok")}
    monkeypatch.setattr(report, "registry", lambda: exps)
    with Store(tmp_path) as st:
        st.record("claims", "k", spec={}, seed=0, values=[Value("y", 1.0)])
        st.set_meta("params:claims", {"preset": "quick", "params": {}})
        # an experiment that never ran for want of data: a row "not run", and the reason listed
        st.set_meta("not_run:lacking", {"units": 7, "of": 7, "missing": {"mnist": "MNIST not found; put it in X"}})
    text = report.write_report(tmp_path, quiet=True).read_text()
    rows = verdict_rows(text)
    assert [r["verdict"] for r in rows] == list(VERDICTS) + ["not run"]
    for r, (i, k) in zip(rows, enumerate(VERDICTS)):
        claim, thesis, ours, scale, verdict = r["cells"]
        assert claim == f"figc: claim {k}" and thesis == f"thesis {k}" and ours == f"ours {k}"
        assert scale == f"preset quick; width {i}"
        assert verdict == f"{VERDICTS[k]} why {k}"
    last = rows[-1]["cells"]
    assert last[0].startswith("lacking:") and "7 of 7 units need mnist" in last[4]
    assert "What did not run, and why" in text and "MNIST not found; put it in X" in text


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


#: every experiment's quick preset shrunk to seconds, for the main-job test
TINY = {
    "batchnorm": {"depths": [3, 6], "activations": ["tanh"], "width": 8, "batch": 16, "seeds": 1},
    "gradients": {"configs": [["tanh", None]], "depths": [3], "width": 8, "seeds": 1, "steps": 5, "batch": 8,
                  "n_train": 32, "n_probe": 8},
    "xor": {"settings": {"tiny": [2, 8, 0.1]}, "seeds": 2, "steps": 20, "log_every": 10, "probe_per_corner": 4},
    "fig3.1": {"widths": [6, 12], "depth": 5, "n": 50},
    "fig3.2": {"widths": [16], "depths": [2, 4], "seeds": 2, "n_iid": 50, "n_mnist": 50},
    "table3.1": {"width": 8, "n": 32, "max_depth": 20, "seeds": 1},
    "effective-nodes": {"widths": [8, 16], "depth": 10, "n": 50, "seeds": 1},
    "fig3.6": {"depth": 3, "width": 8, "seeds": 1, "steps": 4, "every": 2, "batch": 32},
}
NEEDS_MNIST = {"dvcnn", "fig3.3", "fig3.4", "fig3.5", "fig5"}


def test_main_job_without_mnist_runs_the_rest_warns_once_and_reports_what_did_not_run(tmp_path, monkeypatch,
                                                                                     capsys):
    """Issue 14: without MNIST `reproduce` (what scripts/run.sh runs) stopped at fig3.4 with exit 2."""
    from depthscope import cli, data
    from depthscope.experiments import registry

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("DEPTHSCOPE_DATA", str(empty))
    monkeypatch.setenv("DEPTHSCOPE_CACHE", str(empty / "cache"))
    monkeypatch.setattr(data, "DATASETS", {**data.DATASETS, "mnist": {**data.DATASETS["mnist"], "mirrors": ()}})
    reg = registry()
    assert NEEDS_MNIST | set(TINY) == set(reg)  # a new experiment must be added here
    for name, over in TINY.items():
        monkeypatch.setitem(type(reg[name]).presets, "quick", {**type(reg[name]).presets["quick"], **over})
    run = tmp_path / "run"
    assert cli.main(["reproduce", "--run-dir", str(run), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    warnings = [l for l in err.splitlines() if l.startswith("warning:")]
    assert len(warnings) == 1, err
    for what in ("../shared/data/mnist", "--data-dir", "DEPTHSCOPE_DATA", "t10k-images-idx3-ubyte.gz", *NEEDS_MNIST):
        assert what in warnings[0], what
    text = (run / "report.html").read_text()
    rows = verdict_rows(text)
    not_run = {r["cells"][0].split(":")[0] for r in rows if r["verdict"] == "not run"}
    assert NEEDS_MNIST <= not_run, not_run
    mnist_row = [r for r in rows if r["cells"][0] == "fig3.2a: simulation with MNIST inputs matches the i.i.d. one"]
    assert [r["verdict"] for r in mnist_row] == ["not run"]  # a missing series is not "differs"
    for name in NEEDS_MNIST:
        assert f'<a href="#{name}">{name}</a>: ' in text.split("What did not run, and why")[1]
    with Store(run, create=False) as st:
        ran = set(st.experiments())
        assert set(TINY) <= ran and not (ran & NEEDS_MNIST)  # nothing trained on stand-in data
