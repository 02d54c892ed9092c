"""The W&B and MLflow writers with the real libraries, read back through each library's own format.

W&B runs offline (nothing leaves the machine; every W&B directory is under tmp_path) and the
offline run's transaction log (``run-*.wandb``) is decoded with wandb's own protobuf
``Record``. MLflow writes to a local file store read back through ``MlflowClient``.
"""
from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import depthscope

LOGGED = ("vni", "effective_nodes", "act_mean", "act_var", "grad_norm", "grad_rms", "out_grad_rms", "sigma_w2")


def train_watched(writers, steps: int = 4, every: int = 1, **kw):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    with depthscope.watch(net, every=every, optimizer=opt, writers=writers, **kw) as w:
        for _ in range(steps):
            x = torch.randn(16, 5, generator=g)
            opt.zero_grad()
            net(x).pow(2).mean().backward()
            opt.step()
    return w


def expected(w) -> dict[tuple[int, str], float]:
    return {(r["step"], f"depthscope/{q}/{r['name']}"): r[q] for r in w.records for q in LOGGED
            if not math.isnan(r[q])}


# -- W&B ----------------------------------------------------------------------------------------
def read_wandb_log(path: Path) -> list:
    """The records of a W&B transaction log: a LevelDB-style log (7-byte W&B header, 32 KiB blocks,
    each chunk a 7-byte header: CRC32C, length, type FULL/FIRST/MIDDLE/LAST) of protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, pos, out, buf = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if n == 0 and kind == 0:  # zero padding to the block's end
            pos += left - 7
            continue
        buf += data[pos:pos + n]
        pos += n
        if kind in (1, 4):  # FULL or LAST
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def test_wandb_writer_offline_run_reads_back(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="needs the test extra (wandb)")
    from depthscope.integrations.wandb import WandbWriter

    for var, value in dict(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=tmp_path, WANDB_CONFIG_DIR=tmp_path / "cfg",
                           WANDB_CACHE_DIR=tmp_path / "cache", WANDB_DATA_DIR=tmp_path / "data",
                           WANDB_DISABLE_GIT="true", WANDB_DISABLE_CODE="true").items():
        monkeypatch.setenv(var, str(value))
    writer = WandbWriter(project="depthscope-test", dir=str(tmp_path), mode="offline")
    # an absurdly low threshold so that the VNI alert fires and reaches the run summary
    w = train_watched([writer], steps=4, every=2, vni_threshold=1e-9)
    writer.close()
    wandb.teardown()  # run.finish() returns before wandb's service has written the log out
    logs = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(logs) == 1, logs
    history, alerts = {}, None
    recs = read_wandb_log(logs[0])
    assert recs[-1].WhichOneof("record_type") == "exit"  # the whole run is on disk
    for rec in recs:
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
            step = row["depthscope/step"]
            history.update({(step, k): v for k, v in row.items() if k.startswith("depthscope/") and k != "depthscope/step"})
        elif kind == "summary":
            for i in rec.summary.update:
                if (i.key or "/".join(i.nested_key)) == "depthscope/alerts":
                    alerts = json.loads(i.value_json)
    want = expected(w)
    assert {s for s, _ in want} == {0, 2}
    assert history.keys() >= want.keys()
    for k, v in want.items():
        assert history[k] == pytest.approx(v, rel=1e-15), k
    assert alerts == [a.message for a in w.alerts] and alerts


# -- MLflow -------------------------------------------------------------------------------------
def test_mlflow_writer_file_store_reads_back(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="needs the test extra (mlflow-skinny)")
    from mlflow.tracking import MlflowClient

    from depthscope.integrations.mlflow import MLflowWriter

    # MLflow 3 keeps the file store only on request; it is the store that needs no database
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    writer = MLflowWriter(tracking_uri=uri, experiment="watch-test", run_name="a")
    w = train_watched([writer], steps=3, every=1, vni_threshold=1e-9)
    run_id = writer.run_id
    writer.close()
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "a"
    want = expected(w)
    got = {}
    for key in {k for _, k in want}:
        for m in client.get_metric_history(run_id, key):
            got[(m.step, key)] = m.value
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-15), k
    alerts = json.loads(Path(client.download_artifacts(run_id, "depthscope/alerts.json", str(tmp_path))).read_text())
    assert [a["message"] for a in alerts] == [a.message for a in w.alerts] and alerts
    modules = json.loads(Path(client.download_artifacts(run_id, "depthscope/modules.json", str(tmp_path))).read_text())
    assert modules == w.names


def test_mlflow_writer_uses_the_active_run(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="needs the test extra (mlflow-skinny)")
    from depthscope.integrations.mlflow import MLflowWriter

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    try:
        with mlflow.start_run() as run:
            writer = MLflowWriter()
            train_watched([writer], steps=1)
            writer.close()  # not its run: left open
            assert mlflow.active_run().info.run_id == run.info.run_id == writer.run_id
        hist = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "depthscope/vni/0")
        assert [m.step for m in hist] == [0]
    finally:
        mlflow.set_tracking_uri("")


# -- missing packages ---------------------------------------------------------------------------
def test_missing_package_gives_one_line_install_hint():
    """Run where the optional packages cannot be imported (sys.modules[name] = None blocks them)."""
    code = r"""
import sys
for m in ("wandb", "mlflow", "pytorch_lightning", "lightning", "transformers"):
    sys.modules[m] = None
def msg(f):
    try:
        f()
    except ImportError as e:
        return str(e)
    return "no error"
from depthscope.integrations import wandb as w, mlflow as m, lightning as l, transformers as t
print(msg(lambda: w.WandbWriter()))
print(msg(lambda: m.MLflowWriter()))
print(msg(lambda: l.DepthscopeCallback))
print(msg(lambda: t.DepthscopeTrainerCallback))
"""
    src = str(Path(depthscope.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines == [
        "depthscope.integrations.wandb needs the 'wandb' package: pip install 'depthscope[wandb]'",
        "depthscope.integrations.mlflow needs the 'mlflow' package: pip install 'depthscope[mlflow]'",
        "depthscope.integrations.lightning needs the 'pytorch_lightning' (or 'lightning') package: "
        "pip install 'depthscope[lightning]'",
        "depthscope.integrations.transformers needs the 'transformers' package: pip install 'depthscope[transformers]'",
    ]
