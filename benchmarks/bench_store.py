"""Size of the results store: bytes per measurement row, the quick preset's store, the paper preset's projection.

Everything printed is measured in this one run (sizes are exact; times depend on the machine's load):

1. **Synthetic quick-preset store.** The units are the real ones: every experiment's
   ``units()`` at the quick preset (their real specs and keys, 589 units). Their
   measurement rows are synthesised to the quick preset's real counts (issue 11: 456k rows,
   332k of them fig5's): each fig5 unit gets the rows a training run records
   (:meth:`depthscope.train.RunResult.to_values`: 4-5 scalars, loss and accuracy per epoch,
   the VNI of every layer after every epoch, three per-layer finals) with the number of
   epochs that brings fig5 to 332k rows; the other experiments' units share the remaining
   124k rows as per-layer values. Values are random doubles (the worst case for SQLite's
   compact integer encoding). The store is written through :meth:`Store.record` (schema 2)
   and, for comparison, with schema 1's table layout (what depthscope wrote before).
2. **Migration** of that schema-1 store to schema 2 (time, size after).
3. **A real run**: ``effective-nodes`` at a small preset, its bytes per row.
4. **The paper preset, projected**: its units counted from ``units()`` at the paper preset;
   fig5's rows per unit from the training record's shape with every run taking all 100
   epochs (an upper bound: a run stops at its target accuracy); the other experiments at
   their quick rows per unit. Bytes = rows x measured bytes per row + units x measured
   bytes per unit.

    python benchmarks/bench_store.py [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from depthscope.experiments import registry, run_experiment  # noqa: E402
from depthscope.store import DB_NAME, Store, Value  # noqa: E402

QUICK_ROWS = 456_000  # the quick preset's measurement rows (issue 11, counted from a real quick run's store)
QUICK_FIG5_ROWS = 332_000

V1_SCHEMA = """
CREATE TABLE units (experiment TEXT NOT NULL, key TEXT NOT NULL, spec TEXT NOT NULL, seed INTEGER,
    status TEXT NOT NULL, reason TEXT, code_version TEXT NOT NULL, started REAL, finished REAL NOT NULL,
    PRIMARY KEY (experiment, key));
CREATE TABLE measurements (experiment TEXT NOT NULL, key TEXT NOT NULL, quantity TEXT NOT NULL, layer INTEGER,
    step INTEGER, value REAL);
CREATE INDEX measurements_by_quantity ON measurements (experiment, quantity);
CREATE INDEX measurements_by_unit ON measurements (experiment, key);
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def fig5_rows(depth: int, epochs: int, rng: random.Random) -> list[Value]:
    """The rows of one training run as RunResult.to_values lays them out (success after ``epochs``)."""
    out = [Value("success", 1.0), Value("diverged", 0.0), Value("steps", float(epochs * 10)),
           Value("seconds", rng.random() * 10), Value("epoch_of_success", float(epochs))]
    out += [Value("train_accuracy", rng.random(), step=e) for e in range(1, epochs + 1)]
    out += [Value("train_loss", rng.random() * 3, step=e) for e in range(1, epochs + 1)]
    out += [Value("vni", rng.random(), layer=l, step=s * 10) for s in range(epochs + 1) for l in range(1, depth + 1)]
    for q in ("vni_final", "sigma_w2_mu1", "grad_norm"):
        out += [Value(q, rng.random(), layer=l) for l in range(1, depth + 1)]
    return out


def fig5_count(depth: int, epochs: int) -> int:
    return 5 + 2 * epochs + (epochs + 1) * depth + 3 * depth


def synthetic_units() -> list[tuple[str, object, list[Value]]]:
    """(experiment, WorkUnit, values) for every unit of the quick preset, rows synthesised to the real counts."""
    rng = random.Random(0)
    reg = registry()
    units = {name: exp.units(exp.params("quick")) for name, exp in reg.items()}
    f5 = units.pop("fig5")
    epochs = min(range(1, 31), key=lambda e: abs(sum(fig5_count(u.spec["depth"], e) for u in f5) - QUICK_FIG5_ROWS))
    out = [("fig5", u, fig5_rows(u.spec["depth"], epochs, rng)) for u in f5]
    rest = QUICK_ROWS - sum(len(v) for _, _, v in out)
    others = [(n, u) for n, us in units.items() for u in us]
    per, extra = divmod(rest, len(others))
    for i, (n, u) in enumerate(others):
        k = per + (i < extra)
        out.append((n, u, [Value("vni", rng.random(), layer=l) for l in range(1, k + 1)]))
    return out


def write_v1(path: Path, units) -> None:
    """The same units in schema 1's layout (one measurement row repeats experiment, JSON key and quantity)."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.executescript(V1_SCHEMA)
    now = time.time()
    for name, u, values in units:
        con.execute("BEGIN")
        con.executemany("INSERT INTO measurements VALUES (?,?,?,?,?,?)",
                        [(name, u.key, v.quantity, v.layer, v.step, v.value) for v in values])
        con.execute("INSERT INTO units VALUES (?,?,?,?,?,?,?,?,?)",
                    (name, u.key, json.dumps(u.spec, sort_keys=True), u.seed, "done", None, "0.1.0+gbench", now, now))
        con.execute("COMMIT")
    con.close()


def table_bytes(path: Path) -> dict[str, int]:
    con = sqlite3.connect(path)
    try:
        return dict(con.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"))
    finally:
        con.close()


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keep", default=None, help="write the stores here and keep them (default: a temp dir)")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_store_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        run(work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def run(work: Path) -> None:
    units = synthetic_units()
    n_rows = sum(len(v) for _, _, v in units)
    n_units = len(units)
    print(f"synthetic quick-preset store: {n_units} real units of {len({n for n, _, _ in units})} experiments, "
          f"{n_rows:,} measurement rows ({sum(len(v) for n, _, v in units if n == 'fig5'):,} of fig5)")

    v2 = work / "v2"
    shutil.rmtree(v2, ignore_errors=True)
    t0 = time.perf_counter()
    with Store(v2) as st:
        for name, u, values in units:
            st.record(name, u.key, spec=u.spec, seed=u.seed, values=values)
    t_write = time.perf_counter() - t0
    size2 = (v2 / DB_NAME).stat().st_size
    tb = table_bytes(v2 / DB_NAME)
    meas2 = tb.get("measurements", 0)
    unit2 = sum(b for n, b in tb.items() if n in ("units", "sqlite_autoindex_units_1"))
    print(f"schema 2: file {mb(size2)} = {size2 / n_rows:.1f} bytes per measurement row all-in; measurements "
          f"table {meas2 / n_rows:.1f} bytes per row; units {unit2 / n_units:.0f} bytes per unit "
          f"(written in {t_write:.1f} s)")

    v1 = work / "v1"
    shutil.rmtree(v1, ignore_errors=True)
    v1.mkdir()
    write_v1(v1 / DB_NAME, units)
    size1 = (v1 / DB_NAME).stat().st_size
    print(f"schema 1: file {mb(size1)} = {size1 / n_rows:.1f} bytes per measurement row all-in "
          f"({size1 / size2:.1f}x schema 2)")

    t0 = time.perf_counter()
    with Store(v1) as st:
        assert st.migrated_from == 1
        migrated_rows = st._conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
    t_mig = time.perf_counter() - t0
    size_m = (v1 / DB_NAME).stat().st_size
    print(f"migration 1 -> 2: {migrated_rows:,} rows in {t_mig:.1f} s; file {mb(size1)} -> {mb(size_m)}")

    with Store(v2, readonly=True) as st:
        t0 = time.perf_counter()
        n = len(st.rows("fig5", "vni", depth=64))
        t_q = time.perf_counter() - t0
        t0 = time.perf_counter()
        d = len(st.done_keys("fig5"))
        t_d = time.perf_counter() - t0
    print(f"queries: rows('fig5', 'vni', depth=64) -> {n:,} rows in {t_q * 1e3:.0f} ms; done_keys('fig5') "
          f"-> {d} keys in {t_d * 1e3:.0f} ms (first call, counts every unit's rows)")

    real = work / "real"
    shutil.rmtree(real, ignore_errors=True)
    with Store(real) as st:
        run_experiment("effective-nodes", st, overrides={"widths": [25, 50, 100], "depth": 100, "n": 200},
                       quiet=True)
        rrows = st._conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
    rt = table_bytes(real / DB_NAME)
    print(f"real run (effective-nodes, widths 25/50/100, depth 100): {rrows:,} rows, measurements table "
          f"{rt['measurements'] / rrows:.1f} bytes per row, file {(real / DB_NAME).stat().st_size / rrows:.1f} "
          f"bytes per row all-in (small stores: page overhead dominates)")

    # -- the paper preset, projected
    reg = registry()
    quick_rows_per_unit: dict[str, float] = {}
    for name, _, values in units:
        quick_rows_per_unit.setdefault(name, 0)
        quick_rows_per_unit[name] += len(values)
    counts = {}
    for name, exp in reg.items():
        counts[name] = len(exp.units(exp.params("quick")))
    paper_rows = paper_units = 0
    fig5_rows_paper = 0
    for name, exp in reg.items():
        p = exp.params("paper")
        us = exp.units(p)
        paper_units += len(us)
        if name == "fig5":
            fig5_rows_paper = sum(fig5_count(u.spec["depth"], p["epochs"]) for u in us)
            paper_rows += fig5_rows_paper
        else:
            paper_rows += round(len(us) * quick_rows_per_unit[name] / counts[name])
    per_row = meas2 / n_rows
    per_unit = unit2 / n_units
    proj = paper_rows * per_row + paper_units * per_unit
    old = paper_rows * size1 / n_rows
    print(f"paper preset (projected): {paper_units:,} units, {paper_rows:,} rows ({fig5_rows_paper:,} of fig5, "
          f"all runs taking 100 epochs: an upper bound) -> schema 2 about {proj / 1e9:.1f} GB "
          f"(schema 1: about {old / 1e9:.0f} GB)")
    print(f"goals: bytes per measurement row <= 40: {'met' if size2 / n_rows <= 40 else 'NOT met'} "
          f"({size2 / n_rows:.1f} all-in); quick preset's store <= 40 MB: "
          f"{'met' if size2 <= 40e6 else 'NOT met'} ({mb(size2)})")
    if os.environ.get("BENCH_STORE_JSON"):
        json.dump({"rows": n_rows, "bytes_per_row": size2 / n_rows, "quick_mb": size2 / 1e6,
                   "v1_bytes_per_row": size1 / n_rows, "paper_gb": proj / 1e9}, sys.stdout)
        print()


if __name__ == "__main__":
    main()
