"""The memory estimate of an experiment's parameters (depthscope.memory.experiment_bytes) against the memory a
unit really takes, and its sizes read from the parameter names."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import depthscope
from depthscope.memory import GRID_BYTES_PER_RUN, VALUE_BYTES, experiment_bytes, vni_bytes

ENV = {**os.environ, "PYTHONPATH": str(Path(depthscope.__file__).resolve().parents[1])}

# Peak RSS growth of one simulated unit of an experiment in a fresh process (VmHWM reset to the current RSS
# first; glibc's mmap threshold pinned so freed blocks leave the heap, as tests/test_memory.py does).
MEASURE = textwrap.dedent("""
    import json, sys, torch
    from depthscope.experiments import get_experiment
    from depthscope.experiments.base import RunContext
    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    torch.set_num_threads(1)
    name, over = sys.argv[1], json.loads(sys.argv[2])
    exp = get_experiment(name)
    small = exp.params("quick", {**over, "widths": [8], "n": 16})
    ctx = RunContext(store=None, preset="quick", params=small, quiet=True)
    exp.run_unit(exp.units(small)[-1], ctx)  # warm up (imports, first-call allocations)
    params = exp.params("quick", over)
    unit = exp.units(params)[-1]  # a measured unit (the first is the theory curve)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = status("VmRSS")
    exp.run_unit(unit, RunContext(store=None, preset="quick", params=params, quiet=True))
    print(json.dumps([status("VmHWM") - base, exp.memory_bytes(params)[0]]))
""")


@pytest.mark.skipif(sys.platform != "linux", reason="/proc/self/clear_refs and VmHWM are Linux's")
def test_experiment_bytes_against_the_measured_peak_of_a_unit():
    """effective-nodes at width 2000 and 2000 samples: the estimate is above the unit's measured peak and at
    most twice it (measured 175 MB against 240 MB here), so a refusal never stops a unit that would fit by
    more than that factor."""
    over = {"widths": [2000], "n": 2000, "depth": 3, "seeds": 1}
    proc = subprocess.run([sys.executable, "-c", MEASURE, "effective-nodes", json.dumps(over)], capture_output=True,
                          text=True, env={**ENV, "MALLOC_MMAP_THRESHOLD_": "65536"}, timeout=600)
    assert proc.returncode == 0, proc.stderr
    peak, estimate = json.loads(proc.stdout)
    assert peak <= estimate <= 2 * peak, (peak, estimate)


def test_experiment_bytes_reads_the_sizes_by_name():
    b, sizes = experiment_bytes({"widths": [25, 400], "depth": 30, "n": 500, "seeds": 3, "activation": "tanh"})
    assert sizes == {"width": 400, "depth": 30, "samples": 500, "units": 6, "training_rows": 0}
    spec = type("S", (), {"width": 400, "n_in": 400, "init": "gaussian", "arch": "feedforward"})
    assert b == 6 * GRID_BYTES_PER_RUN + vni_bytes(spec, 500) + 30 * VALUE_BYTES
    # nested tables (fig3.3's rows), range strings (fig5's depths), lists of seeds, a null n_train (all 60,000)
    _, s = experiment_bytes({"row_a": {"width": 200, "depths": [5, 1000]}, "row_b": {"depth": 100, "widths": [7]},
                             "n": 10})
    assert (s["width"], s["depth"]) == (200, 1000)
    _, s = experiment_bytes({"depths": "25:500:11", "lrs": {"sgd": "1e-4:1e-2:9"}, "seeds": [0, 1], "width": 8,
                             "epochs": 2, "n_train": None, "batch_size": 100})
    assert (s["depth"], s["units"], s["training_rows"]) == (500, 11 * 9 * 2, 60000)


def test_every_preset_estimate_is_plausible():
    """Quick presets are CPU-minute runs: each estimate well under 1 GB (the check never refuses them on a
    laptop); paper presets under 64 GB (a paper machine)."""
    from depthscope.experiments import registry

    for name, exp in registry().items():
        assert exp.memory_bytes(exp.presets["quick"])[0] < 10**9, name
        assert exp.memory_bytes(exp.presets["paper"])[0] < 64 * 10**9, name
