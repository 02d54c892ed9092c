"""benchmarks/gpu.sh, the one command a session lent a GPU runs: its dry run on the CPU at tiny sizes,
so the script cannot rot between the rare sessions that have a GPU."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash, timeout")
def test_gpu_script_dry_run_on_cpu(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "DEVICE": "cpu", "QUICK": "1", "PYTHON": sys.executable, "OUT": str(out),
           "DEPTHSCOPE_DATA": str(tmp_path / "no-data"), "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["machine.txt", "step_times.txt", "table.txt", "tests.txt"]
    assert " passed" in (out / "tests.txt").read_text()
    table = (out / "table.txt").read_text().splitlines()
    row = table[-1].split()
    assert row[:2] == ["16", "4"] and row[6].endswith("x")  # width, K, ..., speed-up
    assert float(row[-1]) < 1e-5  # the engine's losses equal the loop's
    assert (out / "step_times.txt").read_text().count("ms per member-step") == 4  # 2 depths x 2 stack sizes
    assert "fig5 skipped: no MNIST" in proc.stdout


def test_gpu_script_fails_when_a_part_fails(tmp_path):
    env = {**os.environ, "DEVICE": "cuda:99", "QUICK": "1", "PYTHON": sys.executable, "OUT": str(tmp_path / "o"),
           "DEPTHSCOPE_DATA": str(tmp_path / "no-data")}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 1 and "== table failed: exit 2" in proc.stdout
