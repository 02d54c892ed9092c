"""The CLI: JSON documents, errors, exit codes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import depthscope
from depthscope.cli import main

# Run the package under test (this checkout's src/), installed or not.
ENV = {**os.environ, "PYTHONPATH": str(Path(depthscope.__file__).resolve().parents[1])}


def run_json(capsys, *argv):
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_theory_json(capsys):
    doc = run_json(capsys, "theory", "--depth", "100", "--width", "500", "--activation", "tanh", "--init", "gaussian",
                   "--json")
    for key in ("q_star", "chi", "mu1", "mu2", "s1", "vni", "vni_finite", "vni_asymptotic", "effective_nodes",
                "m1", "m2", "layers", "q"):
        assert key in doc
    assert doc["layers"] == list(range(1, 101))
    assert len(doc["vni"]) == 100 and doc["s1"] == -1 and doc["chi"] == pytest.approx(1.0)


def test_theory_single_layer_and_asymptotic_form(capsys):
    doc = run_json(capsys, "theory", "--depth", "40", "--width", "200", "--activation", "linear", "--layer", "40",
                   "--form", "asymptotic", "--json")
    assert doc["layers"] == [40]
    assert doc["vni"] == [pytest.approx(41 / 200)]


def test_vni_json_beside_theory(capsys):
    doc = run_json(capsys, "vni", "--depth", "6", "--width", "30", "--activation", "linear", "--samples", "400",
                   "--seeds", "3", "--json")
    assert doc["layers"] == list(range(1, 7))
    for key in ("vni_mean", "vni_std", "vni_theory", "effective_nodes_mean", "participation_ratio_mean"):
        assert len(doc[key]) == 6
    np.testing.assert_allclose(doc["vni_mean"], doc["vni_theory"], rtol=0.3)
    np.testing.assert_allclose(doc["effective_nodes_mean"], 30 * (1 - np.array(doc["vni_mean"])) + 1, rtol=0.05)


def test_vni_text_output(capsys):
    assert main(["vni", "--depth", "3", "--width", "10", "--samples", "50", "--seeds", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "VNI mean" in out and len(out.strip().splitlines()) == 2 + 3


@pytest.mark.parametrize("argv,needle", [
    (["vni", "--depth", "3", "--width", "5", "--activation", "swish"], "unknown activation 'swish'"),
    (["vni", "--depth", "3", "--width", "5", "--init", "he"], "unknown init 'he'"),
    (["vni", "--depth", "3", "--width", "0"], "--width: expected a positive integer, got 0"),
    (["theory", "--depth", "-2", "--width", "5"], "--depth: expected an integer >= 0, got -2"),
    (["theory", "--depth", "ten", "--width", "5"], "--depth: expected an integer >= 0, got 'ten'"),
    (["theory", "--depth", "3", "--width", "5", "--layer", "4"], "--layer must lie in 1..3"),
    (["vni", "--depth", "3", "--width", "5", "--inputs", "cifar"], "--inputs must be gaussian, mnist or fashion-mnist"),
    (["vni", "--depth", "3", "--width", "5", "--inputs", "mnist", "--preprocess", "zca"],
     "--preprocess must be one of center, whiten, got 'zca'"),
    (["vni", "--depth", "3", "--width", "5", "--preprocess", "whiten"],
     "--preprocess applies to mnist and fashion-mnist inputs only"),
    (["reproduce", "fig5", "--device", "gpu"], "device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    (["sweep", "--depths", "3", "--device", "tpu"], "device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    pytest.param(["reproduce", "fig5", "--device", "cuda:0"], "--device cuda:0 was asked for but torch sees no CUDA",
                 marks=pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is present")),
])
def test_bad_input_is_one_line_exit_2(argv, needle):
    proc = subprocess.run([sys.executable, "-m", "depthscope", *argv], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_vni_whitened_mnist_inputs(capsys, tmp_path):
    """--preprocess whiten: layer 1's fan-in is the number of kept directions; center keeps 784 pixels."""
    from depthscope import data

    rng = np.random.default_rng(0)
    data.write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (50, 28, 28), dtype=np.uint8))
    data.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 50, dtype=np.uint8))
    common = ["vni", "--depth", "3", "--width", "20", "--inputs", "mnist", "--data-dir", str(tmp_path),
              "--samples", "40", "--seeds", "2", "--json"]
    white = run_json(capsys, *common, "--preprocess", "whiten")
    assert white["preprocess"] == "whiten" and white["in_features"] == 39 and "PCA-whitened" in white["inputs_note"]
    centred = run_json(capsys, *common)
    assert centred["preprocess"] == "center" and centred["in_features"] == 784
    assert white["vni_mean"] != centred["vni_mean"]


def test_bad_device_leaves_no_run_directory(tmp_path):
    for argv in (["sweep", "--depths", "3", "--device", "tpu"], ["reproduce", "fig5", "--device", "tpu"]):
        run_dir = tmp_path / argv[0]
        proc = subprocess.run([sys.executable, "-m", "depthscope", *argv, "--run-dir", str(run_dir)],
                              capture_output=True, text=True, env=ENV)
        assert proc.returncode == 2 and "got 'tpu'" in proc.stderr
        assert not run_dir.exists()
