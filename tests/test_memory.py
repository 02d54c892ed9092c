"""depthscope.memory: each estimate against the memory actually allocated at a small size, and the refusal."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import pytest

import depthscope
from depthscope.errors import TooBig
from depthscope.memory import GRID_BYTES_PER_RUN, check_fits, format_bytes, machine_memory, vni_bytes
from depthscope.nets import NetSpec

ENV = {**os.environ, "PYTHONPATH": str(Path(depthscope.__file__).resolve().parents[1])}

# Peak RSS growth of one vni_per_layer call in a fresh process (VmHWM after a reset: the kernel's own count). glibc's
# mmap threshold is pinned at 64 kB so every large block is mapped on allocation and unmapped on free; with
# its default (a threshold that moves up to 32 MB) freed blocks stay in the heap and the peak varied by 40%
# between identical runs.
MEASURE = textwrap.dedent("""
    import json, sys, torch
    from depthscope.nets import NetSpec
    from depthscope.metrics import vni_per_layer
    from depthscope.memory import vni_bytes
    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    torch.set_num_threads(1)
    out = []
    for n, s, init, arch in json.loads(sys.argv[1]):
        vni_per_layer(NetSpec(depth=2, width=8, init=init, arch=arch), torch.randn(16, 8), 0)  # warm up
        spec = NetSpec(depth=3, width=n, init=init, arch=arch)
        x = torch.randn(s, n)
        # reset the peak (VmHWM) to the current RSS: an earlier, higher transient peak (imports) would hide this one
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = status("VmRSS")
        vni_per_layer(spec, x, 0)
        peak = status("VmHWM")
        out.append((peak - base, vni_bytes(spec, s) - 4 * s * n))  # x existed before the baseline
    print(json.dumps(out))
""")


@pytest.mark.skipif(sys.platform != "linux", reason="/proc/self/clear_refs and VmHWM are Linux's")
def test_vni_bytes_against_the_measured_peak():
    """The estimate is never below the measured peak, and at most twice it (identical runs' peaks vary by up to
    40%: the upper bound is kept loose by that much, no more)."""
    # each size in its own process: ru_maxrss only grows, so a later, smaller case would read 0
    for case in ([3000, 1000, "gaussian", "feedforward"], [2000, 4000, "gaussian", "feedforward"],
                 [2000, 1000, "orthogonal", "feedforward"], [2000, 1000, "gaussian", "volume"]):
        proc = subprocess.run([sys.executable, "-c", MEASURE, json.dumps([case])], capture_output=True, text=True,
                              env={**ENV, "MALLOC_MMAP_THRESHOLD_": "65536"}, timeout=300)
        assert proc.returncode == 0, proc.stderr
        (measured, estimate), = json.loads(proc.stdout)
        assert measured <= estimate <= 2 * measured, (case, measured, estimate)


def test_grid_bytes_per_run_against_tracemalloc():
    """The driver's cost of an expanded run (RunSpec, key, group and done-set slots) is below the constant,
    and the constant is less than twice it (the rest is the store's copy of the keys)."""
    from depthscope.sweep import SweepSpec, expand, make_groups, run_key

    sw = SweepSpec(seeds=3000, depths=[25, 50])
    tracemalloc.start()
    try:
        runs = expand(sw)
        groups = make_groups(runs, sw.group_size)
        keys = [run_key(r, sw.data) for r in runs]
        done = set(keys)
        per_run = tracemalloc.get_traced_memory()[1] / len(runs)
    finally:
        tracemalloc.stop()
    assert groups and done
    assert per_run < GRID_BYTES_PER_RUN < 2 * per_run, per_run


def test_check_fits_names_both_numbers():
    check_fits(10, "tiny", available=100)
    with pytest.raises(TooBig, match=r"--width 9 needs about 2\.0 kB of memory, but only 1\.0 kB is available") as e:
        check_fits(2000, "--width 9", available=1000)
    assert e.value.needed == 2000 and e.value.available == 1000


def test_machine_memory_is_sane():
    avail, total = machine_memory()
    assert 0 < avail <= total


def test_format_bytes():
    assert format_bytes(999) == "999 B" and format_bytes(1500) == "1.5 kB" and format_bytes(1.2e12) == "1.2 TB"


def test_vni_bytes_grows_with_each_size():
    small = vni_bytes(NetSpec(depth=1, width=100), 100)
    assert vni_bytes(NetSpec(depth=1, width=200), 100) > small
    assert vni_bytes(NetSpec(depth=1, width=100), 200) > small
    assert vni_bytes(NetSpec(depth=1, width=100, init="orthogonal"), 100) > small
    assert vni_bytes(NetSpec(depth=1, width=100, arch="volume"), 100) > small
