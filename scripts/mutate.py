#!/usr/bin/env python3
"""Mutation testing with a hand-written list of realistic mutants (tests/mutants.toml).

Each mutant replaces one snippet of one module by a plausible wrong version (a sign, an
off-by-one, a float32 where float64 was needed, a reversed list, a forgotten guard) and
names the test files that should notice. For each mutant this script copies the tree
(src/, tests/, pyproject.toml: from the working tree, or from a git ref with --ref) into a
temporary directory once, applies the mutant there (the real files are never touched),
runs the mapped tests with a timeout, and restores the file. A mutant is

* killed    the tests failed (or timed out) on the mutated code,
* survived  the tests passed: a missing test, unless the list marks it ``equivalent``
            (with the reason) when no test can tell it from the original,
* stale     its snippet does not occur exactly once (the code changed: update the list).

The kill rate is killed / (killed + survived), equivalents and stale mutants left out.
Before the mutants, every distinct test selection is run once on the unmutated copy
(the baseline): a selection that already fails would "kill" everything, so its mutants
are reported as errors instead. Usage:

    python scripts/mutate.py                      # every mutant, working tree
    python scripts/mutate.py --ref main --written-against main   # main's versions of those modules
    python scripts/mutate.py --module metrics/vni.py --jobs 2
    python scripts/mutate.py --list

Exit status: 0 when the kill rate is at least --min-rate (default 0.95) and nothing is
stale or errored, 1 otherwise, 2 for bad arguments or a bad mutant list.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LIST = ROOT / "tests" / "mutants.toml"
PACKAGE = Path("src") / "depthscope"


@dataclasses.dataclass
class Mutant:
    id: str
    module: str  # relative to src/depthscope
    original: str
    replacement: str
    tests: list[str]
    k: str | None = None  # a pytest -k expression narrowing the tests
    written_against: str = "numerics"  # the branch whose code the snippet was copied from
    equivalent: str | None = None  # why no test can tell it from the original
    why: str = ""  # what realistic bug it stands for

    @property
    def selection(self) -> tuple:
        return (tuple(self.tests), self.k)


def load(path: Path) -> list[Mutant]:
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SystemExit(f"mutate.py: cannot read the mutant list {path}: {e}")
    out, seen = [], set()
    fields = {f.name for f in dataclasses.fields(Mutant)}
    for i, m in enumerate(doc.get("mutant", [])):
        unknown = set(m) - fields
        if unknown or not {"id", "module", "original", "replacement", "tests"} <= set(m):
            raise SystemExit(f"mutate.py: {path}: mutant #{i + 1} ({m.get('id', '?')}): needs id, module, original, "
                             f"replacement, tests; unknown keys: {sorted(unknown)}")
        if m["id"] in seen:
            raise SystemExit(f"mutate.py: {path}: duplicate mutant id {m['id']!r}")
        if m["original"] == m["replacement"]:
            raise SystemExit(f"mutate.py: {path}: mutant {m['id']!r} replaces a snippet by itself")
        seen.add(m["id"])
        out.append(Mutant(**m))
    return out


#: What a copy holds: the tests also read the examples, benchmarks and scripts they exercise.
TREE = ("src", "tests", "examples", "benchmarks", "scripts", "pyproject.toml")


def make_tree(dest: Path, ref: str | None) -> None:
    """:data:`TREE` of the working tree or of git ref ``ref``, into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    if ref is None:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for name in TREE:
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, dest / name, ignore=ignore)
            elif (ROOT / name).exists():
                shutil.copy2(ROOT / name, dest / name)
        return
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", ref, *TREE],
                             capture_output=True, check=False)
    if archive.returncode != 0:
        raise SystemExit(f"mutate.py: git archive {ref}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)


def run_tests(tree: Path, tests: tuple, k: str | None, timeout: float) -> tuple[str, float, str]:
    """('pass' | 'fail' | 'timeout', seconds, the output's tail)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    if k:
        cmd += ["-k", k]
    env = dict(os.environ, PYTHONPATH=str(tree / "src"), PYTHONDONTWRITEBYTECODE="1")
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - t0, ""
    tail = (p.stdout + p.stderr).strip().splitlines()[-3:]
    return ("pass" if p.returncode == 0 else "fail"), time.monotonic() - t0, " | ".join(tail)


def run_mutant(m: Mutant, base: Path, work: Path, timeout: float) -> tuple[str, float, str]:
    """Apply ``m`` to a private copy of the module inside ``work`` (a copy of ``base``), run, restore."""
    target = work / PACKAGE / m.module
    original = (base / PACKAGE / m.module).read_text(encoding="utf-8")
    if original.count(m.original) != 1:
        return "stale", 0.0, f"snippet found {original.count(m.original)} times in {m.module}"
    target.write_text(original.replace(m.original, m.replacement), encoding="utf-8")
    try:
        status, secs, tail = run_tests(work, tuple(m.tests), m.k, timeout)
    finally:
        target.write_text(original, encoding="utf-8")
    return ("survived" if status == "pass" else "killed"), secs, (tail if status == "pass" else status)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list-file", type=Path, default=DEFAULT_LIST, help="the mutant list (TOML)")
    ap.add_argument("--ref", help="take src/ and tests/ from this git ref instead of the working tree")
    ap.add_argument("--module", action="append", help="only mutants of this module (repeatable), e.g. metrics/vni.py")
    ap.add_argument("--id", action="append", help="only this mutant (repeatable)")
    ap.add_argument("--written-against", help="only mutants whose snippet was written against this branch")
    ap.add_argument("--jobs", type=int, default=1, help="mutants run in parallel (each in its own copy)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per test run; a timeout counts as killed")
    ap.add_argument("--no-baseline", action="store_true", help="skip checking that the mapped tests pass unmutated")
    ap.add_argument("--min-rate", type=float, default=0.95, help="exit 1 below this kill rate")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    args = ap.parse_args(argv)
    if args.jobs < 1 or args.timeout <= 0 or not 0 <= args.min_rate <= 1:
        print("mutate.py: --jobs >= 1, --timeout > 0 and --min-rate in [0, 1] are required", file=sys.stderr)
        return 2
    mutants = load(args.list_file)
    if args.module:
        mutants = [m for m in mutants if m.module in args.module]
    if args.id:
        mutants = [m for m in mutants if m.id in args.id]
    if args.written_against:
        mutants = [m for m in mutants if m.written_against == args.written_against]
    if not mutants:
        print("mutate.py: no mutant selected", file=sys.stderr)
        return 2
    if args.list:
        for m in mutants:
            eq = f"  [equivalent: {m.equivalent}]" if m.equivalent else ""
            print(f"{m.id:40s} {m.module:22s} ({m.written_against}) -> {', '.join(m.tests)}{eq}")
        return 0

    with tempfile.TemporaryDirectory(prefix="depthscope-mutate-") as tmp:
        # readable by all, as a checkout is: test_store's read-only test runs store.py as "nobody" when root
        os.chmod(tmp, 0o755)
        base = Path(tmp) / "base"
        make_tree(base, args.ref)
        works = []
        for j in range(args.jobs):
            w = Path(tmp) / f"work{j}"
            shutil.copytree(base, w)
            works.append(w)
        broken: dict[tuple, str] = {}
        t0 = time.monotonic()
        if not args.no_baseline:
            sels = sorted({m.selection for m in mutants if not m.equivalent}, key=str)
            print(f"baseline: {len(sels)} test selection(s) on the unmutated code", flush=True)
            with cf.ThreadPoolExecutor(args.jobs) as pool:
                for (tests, k), (status, secs, tail) in zip(
                        sels, pool.map(lambda sel: run_tests(base, sel[0], sel[1], args.timeout), sels)):
                    if status != "pass":
                        broken[(tests, k)] = f"baseline {status}: {tail}"
                        print(f"  BROKEN {' '.join(tests)} -k {k!r}: {status} {tail}", flush=True)
            print(f"baseline done ({time.monotonic() - t0:.0f} s)", flush=True)
        results: dict[str, tuple[str, float, str]] = {}
        todo = []
        for m in mutants:
            if m.equivalent:
                results[m.id] = ("equivalent", 0.0, m.equivalent)
            elif m.selection in broken:
                results[m.id] = ("error", 0.0, broken[m.selection])
            else:
                todo.append(m)
        free = list(works)

        def job(m: Mutant) -> tuple[str, tuple[str, float, str]]:
            w = free.pop()
            try:
                return m.id, run_mutant(m, base, w, args.timeout)
            finally:
                free.append(w)

        with cf.ThreadPoolExecutor(args.jobs) as pool:
            for mid, res in pool.map(job, todo):
                results[mid] = res
                print(f"{res[0]:10s} {mid:40s} {res[1]:6.1f}s  {res[2] if res[0] != 'killed' else ''}", flush=True)

    counts = {s: sum(1 for r in results.values() if r[0] == s)
              for s in ("killed", "survived", "equivalent", "stale", "error")}
    judged = counts["killed"] + counts["survived"]
    rate = counts["killed"] / judged if judged else float("nan")
    print(f"\n{len(results)} mutants: " + ", ".join(f"{v} {k}" for k, v in counts.items())
          + f"; kill rate {counts['killed']}/{judged} = {rate:.1%} ({time.monotonic() - t0:.0f} s)")
    for s in ("survived", "stale", "error"):
        for mid, r in results.items():
            if r[0] == s:
                print(f"  {s}: {mid}: {r[2]}")
    ok = judged > 0 and rate >= args.min_rate and counts["stale"] == 0 and counts["error"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
