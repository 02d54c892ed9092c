"""The HTML report of a run directory: every experiment's figures, drawn from the store, in one file.

:func:`write_report` asks each experiment that has units in the store to draw
its figures (PNG + SVG under ``RUN_DIR/figures``) from the store alone, then
writes ``RUN_DIR/report.html``: self-contained (PNGs embedded as base64, no
external scripts, styles or fonts), one section per figure with its title, the
thesis figure it reproduces, the command that regenerates it, a one-line
verdict (what we saw vs what the thesis claims) and its caption. At the top,
one verdict table holds every claim: claim | thesis value | our value | preset
and scale | verdict, the verdicts kept apart (values agree within a stated
tolerance / trend agrees, values differ / differs / not run / not judged); then
a summary table, and what did not run and why (e.g. MNIST missing). A figure
that fails to draw becomes a visible note, never a crash.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from .experiments import FigureResult, registry
from .experiments.base import VERDICTS, Claim, Experiment
from .experiments.sweeps import user_sweeps
from .progress import Progress
from .store import Store

REPORT_NAME = "report.html"

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
     padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:1em 0;font-size:.92em} td,th{border:1px solid #ccc;padding:.3em .6em;
     text-align:left;vertical-align:top}
th{background:#f3f3f3} code{background:#f5f5f5;padding:.1em .3em;border-radius:3px;font-size:.9em}
figure{margin:1.5em 0;padding:1em;border:1px solid #ddd;border-radius:6px}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{margin-top:.6em;font-size:.92em}
.verdict{font-weight:600;margin:.4em 0} .agree{color:#1b6e20} .differ{color:#b00020} .unjudged{color:#555}
.trend{color:#8a5a00} .notrun{color:#555;font-style:italic}
table.verdicts td.v{font-weight:600;white-space:nowrap} table.verdicts td.v span{font-weight:400;white-space:normal}
.note{background:#fff4e5;border:1px solid #f0b35a;padding:.6em;border-radius:4px}
.muted{color:#666;font-size:.9em}
"""


@dataclass
class _Section:
    experiment: str
    title: str
    reproduces: str
    preset: str | None
    n_done: int
    n_failed: int
    versions: list[str]
    figures: list[FigureResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    not_run: dict | None = None  # store meta not_run:NAME: {"units", "of", "missing": {dataset: message}}


def _img_tag(fig: FigureResult) -> tuple[str, str | None]:
    """(html for the figure's image, or a note when it cannot be embedded)."""
    pngs = [Path(p) for p in fig.paths if str(p).lower().endswith(".png")]
    if not pngs:
        return "", f"figure {fig.name}: no PNG file was produced"
    png = pngs[0]
    try:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
    except OSError as e:
        return "", f"figure {fig.name}: cannot read {png} ({e})"
    alt = html.escape(fig.title, quote=True)
    return f'<img src="data:image/png;base64,{data}" alt="{alt}" data-figure="{html.escape(fig.name)}">', None


def _rel(path, run_dir: Path) -> str:
    try:
        return Path(os.path.relpath(Path(path).resolve(), run_dir.resolve())).as_posix()
    except ValueError:  # another drive
        return str(path)


def save_figure(fig, outdir: Path, name: str, dpi: int = 150) -> list[Path]:
    """Save a matplotlib Figure as OUTDIR/NAME.png (``dpi``) and NAME.svg; returns [png, svg]."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = [outdir / f"{name}.png", outdir / f"{name}.svg"]
    fig.savefig(paths[0], dpi=dpi, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    return paths


def _figure_verdict(fig: FigureResult) -> tuple[str, str]:
    """(CSS class, words) of a figure's claims taken together: the worst kind sets the colour."""
    kinds = [c.verdict for c in claims_of(fig, "")]
    words = ", ".join(dict.fromkeys(VERDICTS[k] for k in kinds))
    for k in ("differs", "trend", "not run", "not judged"):
        if k in kinds:
            return _KIND_CLASS[k], words
    return "agree", words


#: CSS class of each verdict kind
_KIND_CLASS = {"agree": "agree", "trend": "trend", "differs": "differ", "not run": "notrun", "not judged": "unjudged"}


def claims_of(fig: FigureResult, scale: str) -> list[Claim]:
    """The figure's claims; a figure without any gets one row from its verdict line: ``agrees`` True is a
    qualitative check (kind "trend": values not compared), False "differs", None "not judged"."""
    if fig.claims:
        return [Claim(c.claim, c.thesis, c.ours, f"{scale}; {c.scale}" if c.scale and scale else c.scale or scale,
                      c.verdict, c.why) for c in fig.claims]
    kind = {True: "trend", False: "differs"}.get(fig.agrees, "not judged")
    why = "a qualitative check only; the values are not compared" if fig.agrees is True else ""
    return [Claim(fig.reproduces, "see the figure's verdict", fig.verdict, scale, kind, why)]


def infer_preset(exp: Experiment, stored: set[str]) -> str | None:
    """The preset whose units share the most keys with ``stored`` (the unit keys in the store), None when no
    preset's do. For a run that has not saved its parameters yet (they are saved when it ends): judging a
    paper-preset run's units with the quick preset's parameters would select none of them, or the wrong ones."""
    best, hits = None, 0
    for name in exp.presets:
        try:
            keys = {u.key for u in exp.units(exp.params(name))}
        except Exception:  # an experiment that cannot list its units here: not judged on them (never a crash)
            continue
        n = len(keys & stored)
        if n > hits:
            best, hits = name, n
    return best


def _not_run_why(info: dict) -> str:
    missing = info.get("missing") or {}
    need = ", ".join(missing) or "its data"
    return f"{info.get('units')} of {info.get('of')} units need {need}, which is not on disk"


def _collect(store: Store, outdir: Path, quiet: bool) -> tuple[list[_Section], list[str]]:
    reg = registry()
    stored = store.experiments()
    reg.update(user_sweeps(store, [n for n in stored if n not in reg]))  # a user's own grids: the study's figures
    orphans = [f"experiment {n!r} has stored results but no module defines it (skipped)"
               for n in stored if n not in reg]
    not_run = {n: store.get_meta(f"not_run:{n}") for n in reg}
    names = [n for n in reg if n in stored or not_run[n]]
    sections = []
    with Progress(len(names), "report", quiet=quiet) as bar:
        for name in names:
            exp = reg[name]
            units = store.units(name)
            meta = store.get_meta(f"params:{name}") or {}
            params = meta.get("params")
            preset = meta.get("preset")
            inferred = None
            if params is None:  # a run still going, or killed: its parameters are saved when it ends
                inferred = infer_preset(exp, {u.key for u in units})
                preset = inferred or ("quick" if "quick" in exp.presets else next(iter(exp.presets), None))
                params = dict(exp.presets.get(preset, {})) if preset else {}
            sec = _Section(name, exp.title, exp.reproduces, f"{preset} (inferred)" if inferred else preset,
                           sum(u.status == "done" for u in units), sum(u.status == "failed" for u in units),
                           sorted({u.code_version for u in units}), not_run=not_run[name])
            if inferred:
                sec.notes.append(f"{name}: the run has not saved its parameters (still running, or stopped before "
                                 f"it ended); its {len(units)} stored units are judged as preset {inferred!r}, the "
                                 "preset whose units they match")
            if not units:  # nothing stored: it did not run at all
                sections.append(sec)
                bar.update()
                continue
            try:
                sec.figures = list(exp.figures(store, outdir, params) or [])
            except Exception as e:  # a broken figure must not take the report down
                last = traceback.format_exception_only(type(e), e)[-1].strip()
                sec.notes.append(f"drawing the figures of {name} failed: {last}")
            if not sec.figures and not sec.notes:
                sec.notes.append(f"{name} drew no figure from the stored data")
            sections.append(sec)
            bar.update()
    return sections, orphans


def _render(run_dir: Path, sections: list[_Section], orphans: list[str], report_dir: Path | None = None) -> str:
    esc = html.escape
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>depthscope report: {esc(run_dir.name)}</title><style>{_CSS}</style></head><body>",
           "<h1>depthscope report</h1>",
           f'<p class="muted">Run directory <code>{esc(str(run_dir))}</code>, written {now}. Every number '
           "below is read from the run's results store (<code>results.sqlite</code>); each figure names the "
           "command that regenerates it.</p>"]

    out += _verdict_table(sections)

    # Summary table.
    out.append("<h2>Summary</h2><table><tr><th>experiment</th><th>reproduces</th><th>preset</th>"
               "<th>units done</th><th title=\"store status failed: the unit diverged, overflowed or crashed "
               "(for fig5 these runs are also among the failed trainings)\">units stopped early</th>"
               "<th>not run</th><th>figures</th><th>code version</th></tr>")
    for s in sections:
        nr = s.not_run or {}
        out.append(f"<tr><td><a href=\"#{esc(s.experiment)}\">{esc(s.experiment)}</a><br>"
                   f"<span class=muted>{esc(s.title)}</span></td><td>{esc(s.reproduces)}</td>"
                   f"<td>{esc(str(s.preset))}</td><td>{s.n_done}</td><td>{s.n_failed}</td>"
                   f"<td>{esc(str(nr.get('units', 0)))}</td>"
                   f"<td>{len(s.figures)}</td><td>{esc(', '.join(s.versions))}</td></tr>")
    out.append("</table>")

    lacking = [s for s in sections if s.not_run]
    if lacking:
        out.append('<h2 id="not-run">What did not run, and why</h2><ul>')
        for s in lacking:
            out.append(f'<li class="note"><a href="#{esc(s.experiment)}">{esc(s.experiment)}</a>: '
                       f"{esc(_not_run_why(s.not_run))}.</li>")
        messages = {m for s in lacking for m in (s.not_run.get("missing") or {}).values()}
        out.append("</ul>" + "".join(f'<p class="muted">{esc(m)}.</p>' for m in sorted(messages)))

    figs = [f for s in sections for f in s.figures]
    if not figs:
        out.append('<p class="note">No figure could be drawn from this store.</p>')

    notes = orphans + [n for s in sections for n in s.notes]
    if notes:
        out.append("<h2>Notes</h2><ul>" + "".join(f'<li class="note">{esc(n)}</li>' for n in notes) + "</ul>")

    # One section per experiment.
    for s in sections:
        out.append(f'<h2 id="{esc(s.experiment)}">{esc(s.experiment)}: {esc(s.title)}</h2>')
        out.append(f'<p class="muted">Reproduces {esc(s.reproduces)}; preset {esc(str(s.preset))}; '
                   f"{s.n_done} units done, {s.n_failed} stopped early (diverged, overflowed or crashed).</p>")
        if s.not_run:
            out.append(f'<p class="note">Not run: {esc(_not_run_why(s.not_run))}.</p>')
        for n in s.notes:
            out.append(f'<p class="note">{esc(n)}</p>')
        for f in s.figures:
            img, problem = _img_tag(f)
            cls, word = _figure_verdict(f)
            out.append(f'<figure id="fig-{esc(f.name)}">')
            out.append(img if img or f.html else f'<p class="note">{esc(problem or "")}</p>')
            others = [_rel(p, report_dir or run_dir) for p in f.paths if not str(p).lower().endswith(".png")]
            links = " ".join(f'<a href="{esc(n)}">{esc(n)}</a>' for n in others)
            out.append(f"<figcaption><b>{esc(f.name)}: {esc(f.title)}</b> (reproduces {esc(f.reproduces)})"
                       f'<p class="verdict {cls}">[{word}] {esc(f.verdict)}</p>'
                       f"<p>{esc(f.caption)}</p>" + (f.html or "") +
                       f"<p>Regenerate: <code>{esc(f.command)}</code>"
                       + (f"<br>Vector version: {links}" if links else "") + "</p></figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def _verdict_table(sections: list[_Section]) -> list[str]:
    """The verdict table: one row per claim of every figure, and one per experiment that did not run."""
    esc = html.escape
    rows = []
    for s in sections:
        scale = f"preset {s.preset}"
        for f in s.figures:
            rows += [(s, f, c) for c in claims_of(f, scale)]
        if s.not_run and not s.figures:
            rows.append((s, None, Claim(f"{s.title}", s.reproduces, "-", scale, "not run", _not_run_why(s.not_run))))
    out = ['<h2 id="verdicts">Verdicts: every claim, the thesis\' value and ours</h2>',
           '<p class="muted">Verdicts: ' + "; ".join(f'<span class="{_KIND_CLASS[k]}">{esc(v)}</span>'
                                                     for k, v in VERDICTS.items()) +
           ". The tolerance, the scale reason or why a claim was not run stands under each verdict.</p>"]
    if not rows:
        return out + ['<p class="note">No claim could be judged from this store.</p>']
    counts = {k: sum(c.verdict == k for _, _, c in rows) for k in VERDICTS}
    out.append('<p>' + ", ".join(f"{n} {esc(VERDICTS[k])}" for k, n in counts.items() if n) + ".</p>")
    out.append('<table class="verdicts"><tr><th>claim</th><th>thesis value</th><th>our value</th>'
               "<th>preset and scale</th><th>verdict</th></tr>")
    for s, f, c in rows:
        where = (f'<a href="#fig-{esc(f.name)}">{esc(f.name)}</a>' if f is not None
                 else f'<a href="#{esc(s.experiment)}">{esc(s.experiment)}</a>')
        why = f"<br><span>{esc(c.why)}</span>" if c.why else ""
        out.append(f'<tr data-verdict="{esc(c.verdict)}"><td>{where}: {esc(c.claim)}</td><td>{esc(c.thesis)}</td>'
                   f"<td>{esc(c.ours)}</td><td>{esc(c.scale)}</td>"
                   f'<td class="v {_KIND_CLASS[c.verdict]}">{esc(VERDICTS[c.verdict])}{why}</td></tr>')
    out.append("</table>")
    return out


def writable_dir(path: Path) -> bool:
    """Can the report be written into ``path``: the directory, and its ``figures`` and report file if they exist."""
    path = Path(path)
    need = [path] + [p for p in (path / "figures", path / REPORT_NAME) if p.exists()]
    return all(os.access(p, os.W_OK) for p in need)


def write_report(run_dir: Path, quiet: bool = False, out: Path | None = None) -> Path:
    """Draw every stored experiment's figures into OUT/figures and write OUT/report.html (OUT: ``out``, else
    RUN_DIR); returns its path. The store is opened read-only: with ``out`` elsewhere, nothing under RUN_DIR
    changes."""
    run_dir = Path(run_dir)
    out = run_dir if out is None else Path(out)
    outdir = out / "figures"
    with Store(run_dir, create=False, readonly=True) as store:  # a missing or damaged store: before any mkdir
        outdir.mkdir(parents=True, exist_ok=True)
        sections, orphans = _collect(store, outdir, quiet)
    path = out / REPORT_NAME
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(_render(run_dir, sections, orphans, out), encoding="utf-8")
    tmp.replace(path)
    return path
