"""examples/gpt_vanishing_nodes.py at a tiny size: it runs, fills one store run per variant, draws its figure."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from depthscope.store import Store

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gpt_vanishing_nodes.py"


def load_example():
    spec = importlib.util.spec_from_file_location("gpt_vanishing_nodes", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpt_example_runs_small(tmp_path, capsys, one_thread):
    ex = load_example()
    ex.main(["--steps", "4", "--layers", "3", "--width", "16", "--heads", "2", "--context", "16", "--batch", "4",
             "--every", "2", "--out", str(tmp_path)])
    store = Store(tmp_path, create=False)
    try:
        rows = store.rows("watch", "vni")
        var = store.rows("watch", "act_var")  # recorded even where the VNI is undefined (variance 0)
        runs = store.get_meta("watch/runs", [])
    finally:
        store.close()
    assert runs == ["residual_layernorm", "layernorm_only", "residual_only", "neither"]
    for run in runs:
        mine = [r for r in var if r["run"] == run]
        assert sorted({(r["step"], r["layer"]) for r in mine}) == [(s, l) for s in (0, 2) for l in (1, 2, 3)]
        assert all(0 < r["value"] <= 1 for r in rows if r["run"] == run)
    assert (tmp_path / "gpt_vni_by_block.png").stat().st_size > 0
    assert "final loss" in capsys.readouterr().out


def test_gpt_example_rejects_bad_arguments(tmp_path):
    ex = load_example()
    with pytest.raises(SystemExit) as e:
        ex.main(["--width", "10", "--heads", "4", "--out", str(tmp_path)])
    assert e.value.code == 2
