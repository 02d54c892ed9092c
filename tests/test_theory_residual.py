"""The residual theory's radial mode (two-layer relu branch; docs/theory.md, "Residual nets")."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from depthscope.metrics import vni_per_layer
from depthscope.nets import NetSpec
from depthscope.theory_residual import predict_residual


def test_radial_mode_only_where_the_stream_has_a_mean():
    # odd phi and the one-layer family: no radial term, the first-order (bulk) form unchanged
    for act in ("linear", "tanh"):
        th = predict_residual(200, 64, act, "gaussian", branch="two", alpha=0.3, samples=256)
        assert np.all(th.radial_fraction == 0) and np.all(th.mean2 < 1e-20)  # quadrature rounding: ~1e-31
    th = predict_residual(200, 64, "relu", "gaussian", branch="two", alpha=0.3, samples=256)
    assert th.radial_fraction[-1] > 0.2 and np.all(np.diff(th.mean2) > 0)
    assert np.all(np.diff(th.norm_variance) > 0) and th.norm_variance[0] > 2 / 64  # inputs' chi^2 spread + gains


def test_radial_variance_is_the_mean_scaled_by_each_samples_norm():
    # the mechanism, checked in one simulated net: the centred variance along the mean direction is
    # mean2 (1 - exp(-v/4)) + T_b R_b (v: the samples' log-norm variance; T_b R_b the bulk's share along the
    # mean, which the mean inherits from the layers that amplified it), to 25% at N = 128, alpha = 0.3, L = 200
    n_w, depth = 128, 200
    x = torch.randn(4 * n_w, n_w, generator=torch.Generator().manual_seed(1000), dtype=torch.float64)
    spec = NetSpec(depth, n_w, "relu", "gaussian", arch="residual", branch="two", alpha=0.3)
    from depthscope.nets import stream_layers

    for l, _, xl in stream_layers(spec, x, 0):
        if l != depth:
            continue
        m = xl.mean(0)
        xc = xl - m
        c = xc.T @ xc / (len(xl) - 1)
        t = float(c.trace()) / n_w
        mh = m / m.norm()
        t_r = float(mh @ c @ mh) / n_w
        v = float(torch.log((xl**2).sum(1)).var())
        mean2 = float(m @ m) / n_w
        radial = mean2 * -math.expm1(-v / 4)
        r = float((c * c).sum()) / float(c.trace()) ** 2
        r_b = (r - (radial / t) ** 2) / (1 - (radial / t) ** 2)  # the bulk's VNI, from R = f^2 + (1 - f^2) R_b
        assert t_r == pytest.approx(radial + (t - radial) * r_b, rel=0.25), (t_r, radial, t, r_b)
        assert radial / t > 0.2  # the radial mode carries a real share there


@pytest.mark.parametrize("n_w,depth,alpha,seeds", [(64, 120, 0.3, 48)])
def test_relu_two_layer_branch_within_10_percent_where_the_radial_mode_grows(n_w, depth, alpha, seeds):
    # 48 seeds (~8 s): measured 0.0588 / 0.108 / 0.160 / 0.244 at L = 30 / 60 / 90 / 120 (se 1-6%); the
    # first-order (bulk-only) form reads 0.053 / 0.083 / 0.112 / 0.140 (-11% to -42%), and R = f^2 + (1 - f)^2 R_b
    # without the bulk share along the mean -14% to -25%
    layers = [depth // 4, depth // 2, 3 * depth // 4, depth]
    runs = [vni_per_layer(NetSpec(depth, n_w, "relu", "gaussian", arch="residual", branch="two", alpha=alpha),
                          torch.randn(4 * n_w, n_w, generator=torch.Generator().manual_seed(1000 + s)), s,
                          layers=layers) for s in range(seeds)]
    m = torch.stack(runs)[:, [l - 1 for l in layers]].mean(0).numpy()
    th = predict_residual(depth, n_w, "relu", "gaussian", branch="two", alpha=alpha, input_variance=1.0,
                          samples=4 * n_w)
    err = th.vni[[l - 1 for l in layers]] / m - 1
    assert np.all(np.abs(err) <= 0.10), err


def test_table_script_pools_seed_files_like_one_run(tmp_path):
    # scripts/residual_theory_table.py: two --out files of disjoint seeds, pooled by --from, give the table of one
    # run over all the seeds (the docs' 32-seed table is pooled from 8-seed files)
    import json
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "residual_theory_table.py")
    pt = ["--points", "relu,two,16,8,0.1"]

    def run(*args):
        p = subprocess.run([sys.executable, script, *pt, *args], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        return p.stdout

    run("--seeds", "2", "--first-seed", "0", "--out", str(tmp_path / "a.json"))
    run("--seeds", "3", "--first-seed", "2", "--out", str(tmp_path / "b.json"))
    run("--seeds", "5", "--out", str(tmp_path / "all.json"))
    pooled = run("--from", f"{tmp_path / 'a.json'},{tmp_path / 'b.json'}", "--out", str(tmp_path / "p.json"))
    assert "| relu | two | 16 | 0.1 | 8 | 5 |" in pooled
    got, ref = json.loads((tmp_path / "p.json").read_text()), json.loads((tmp_path / "all.json").read_text())
    for g, r in zip(got, ref):
        assert g["seeds"] == r["seeds"] == 5 and g["measured"] == pytest.approx(r["measured"], rel=1e-12)
        assert g["se"] == pytest.approx(r["se"], rel=1e-9)
