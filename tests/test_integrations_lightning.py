"""DepthscopeCallback with the real Lightning Trainer (CPU, tiny model, no files outside tmp_path).

Each test compares the callback's records with a plain-loop ``depthscope.watch`` of the same
model (same seed) on the same batches: Lightning must not add, drop or shift a record.
"""
from __future__ import annotations

import csv

import pytest
import torch
from torch import nn
from torch.nn import functional as F

pl = pytest.importorskip("pytorch_lightning", reason="needs the test extra (pytorch-lightning)")

import depthscope  # noqa: E402
from depthscope.integrations.lightning import DepthscopeCallback  # noqa: E402

pytestmark = [
    # Lightning's advice about DataLoader workers and batch sizes on a tiny CPU run
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`"),
    pytest.mark.filterwarnings("ignore:.*number of training batches.*smaller than the logging interval.*"),
    # pytorch-lightning 2.6.6 against torch 2.13's pytree (Lightning's code, not ours)
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning"),
]

COMPARED = ("vni", "act_mean", "act_var", "grad_norm", "grad_rms", "out_grad_rms", "sigma_w2", "sigma_w2_mu1",
            "samples", "calls")


def make_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))


class Tiny(pl.LightningModule):
    def __init__(self, seed: int = 0, fail_at: int | None = None):
        super().__init__()
        self.net = make_net(seed)
        self.fail_at = fail_at

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        if self.fail_at is not None and batch_idx == self.fail_at:
            raise RuntimeError("boom")
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, _ = batch
        # scaled inputs: had a validation pass been captured, VNI/act_var would differ
        self.net(5.0 * x + 1.0)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2)


def data(n: int = 96, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return torch.utils.data.TensorDataset(x, y)


def loader(ds, batch=8):
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False)


def trainer(tmp_path, cb, **kw):
    base = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, default_root_dir=str(tmp_path))
    base.update(kw)
    return pl.Trainer(callbacks=[cb], **base)


def plain_records(ds, steps: int, every: int, accumulate: int = 1, batch: int = 8) -> list[dict]:
    """The reference: a bare PyTorch loop, watched with optimizer=, same init and batches."""
    net = make_net(0)
    opt = torch.optim.SGD(net.parameters(), lr=0.2)
    batches = list(loader(ds, batch))
    with depthscope.watch(net, every=every, optimizer=opt) as w:
        for s in range(steps):
            opt.zero_grad()
            for x, y in batches[s * accumulate:(s + 1) * accumulate]:
                # Lightning divides the loss by the accumulation count
                (F.cross_entropy(net(x), y) / accumulate).backward()
            opt.step()
    return w.records


def assert_same(got: list[dict], want: list[dict]) -> None:
    assert [(r["step"], r["name"].removeprefix("net.")) for r in got] == \
        [(r["step"], r["name"]) for r in want], "different steps or modules recorded"
    for a, b in zip(got, want):
        for q in COMPARED:
            assert a[q] == pytest.approx(b[q], rel=1e-6, abs=1e-12, nan_ok=True), (a["step"], a["name"], q)


def test_lightning_records_equal_plain_loop_and_exclude_validation(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # nothing may be written beside the user's script
    ds, val = data(), data(32, seed=2)
    cb = DepthscopeCallback(every=2)
    # validation every 3 training batches and a sanity check of 2 batches before training
    trainer(tmp_path, cb, max_steps=7, val_check_interval=3, num_sanity_val_steps=2).fit(
        Tiny(), loader(ds), loader(val))
    want = plain_records(ds, steps=7, every=2)
    assert_same(cb.records, want)
    assert {r["step"] for r in cb.records} == {0, 2, 4, 6}
    assert all(r["calls"] == 1 for r in cb.records)  # one training forward per step, no validation pass
    assert not cb.watch.attached
    assert list(cwd.iterdir()) == []


def test_lightning_gradient_accumulation_counts_optimizer_steps(tmp_path):
    ds = data()
    cb = DepthscopeCallback(every=1)
    trainer(tmp_path, cb, max_steps=4, accumulate_grad_batches=3).fit(Tiny(), loader(ds))
    want = plain_records(ds, steps=4, every=1, accumulate=3)
    assert_same(cb.records, want)
    assert sorted({r["step"] for r in cb.records}) == [0, 1, 2, 3]
    assert all(r["calls"] == 3 for r in cb.records)  # three batches per optimizer step


def test_lightning_no_extra_gradient_less_step_at_the_end(tmp_path):
    """A bare watch wrote the validation pass after the last optimizer step as a gradient-less record."""
    ds, val = data(32), data(16, seed=2)
    cb = DepthscopeCallback(every=1)
    trainer(tmp_path, cb, max_epochs=1, num_sanity_val_steps=0).fit(Tiny(), loader(ds), loader(val))
    assert max(r["step"] for r in cb.records) == 3  # 4 batches: steps 0..3
    assert all(r["grad_norm"] == r["grad_norm"] for r in cb.records)  # no NaN gradient: every record trained


def test_lightning_exception_detaches(tmp_path):
    ds = data()
    cb = DepthscopeCallback(every=1)
    module = Tiny(fail_at=3)
    with pytest.raises(RuntimeError, match="boom"):
        trainer(tmp_path, cb, max_steps=10).fit(module, loader(ds))
    w = cb.watch
    assert not w.attached and not w.armed
    assert all(not m._forward_hooks for m in module.modules())
    assert not w.optimizer._optimizer_step_post_hooks
    assert sorted({r["step"] for r in w.records}) == [0, 1, 2]  # the broken step is dropped


def test_lightning_resumed_fit_continues_the_step_count(tmp_path):
    ds = data(32)  # 4 batches per epoch
    cb = DepthscopeCallback(every=1)
    t = trainer(tmp_path, cb, max_epochs=1)
    t.fit(Tiny(), loader(ds))
    t.save_checkpoint(tmp_path / "a.ckpt")
    cb2 = DepthscopeCallback(every=1)
    trainer(tmp_path, cb2, max_epochs=2).fit(Tiny(seed=7), loader(ds), ckpt_path=tmp_path / "a.ckpt")
    assert sorted({r["step"] for r in cb2.records}) == [4, 5, 6, 7]  # Lightning's global_step, not 0 again


def test_lightning_logger_and_store(tmp_path):
    from pytorch_lightning.loggers import CSVLogger

    from depthscope.store import Store

    ds = data(48)
    cb = DepthscopeCallback(every=2, run_dir=tmp_path / "store", run="pl")
    logger = CSVLogger(str(tmp_path / "logs"), name="x", version=0)
    trainer(tmp_path, cb, max_steps=5, logger=logger, log_every_n_steps=1).fit(Tiny(), loader(ds))
    with open(tmp_path / "logs" / "x" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = {(int(r["step"]), k): float(v) for r in rows for k, v in r.items() if k.startswith("depthscope/") and v}
    want = {(r["step"], f"depthscope/vni/{r['name']}"): r["vni"] for r in cb.records}
    got = {k: v for k, v in logged.items() if k[1].startswith("depthscope/vni/")}
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-12)
    store = Store(tmp_path / "store", create=False)
    try:
        stored = {(r["step"], r["layer"]): r["value"] for r in store.rows("watch", "vni")}
    finally:
        store.close()
    assert stored == {(r["step"], r["layer"]): r["vni"] for r in cb.records}


def test_lightning_callback_rejects_bad_keywords():
    with pytest.raises(TypeError, match="evry"):
        DepthscopeCallback(evry=3)
    with pytest.raises(ValueError, match="optimizer"):
        DepthscopeCallback(optimizer=None)
    with pytest.raises(ValueError, match="ranks"):
        DepthscopeCallback(ranks="all")


@pytest.mark.slow
def test_lightning_ddp_spawn_gathers_across_ranks(tmp_path):
    """Lightning's own DDP (2 CPU processes, gloo): rank 0's CSV holds the concatenated batch's statistics."""
    from torch.utils.data.distributed import DistributedSampler

    ds = data(64)
    cb = DepthscopeCallback(every=1, csv=tmp_path / "watch.csv")
    trainer(tmp_path, cb, max_steps=3, strategy="ddp_spawn", devices=2).fit(Tiny(), loader(ds))
    with open(tmp_path / "watch.csv") as f:
        got = [{k: (v if k == "name" else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]
    for r in got:
        r["step"] = int(r["step"])
    # Lightning deals the training data with a shuffling DistributedSampler (seed 0): step s of
    # one process on the concatenated batch sees rank 0's s-th batch of 8, then rank 1's
    ranks = [list(DistributedSampler(ds, num_replicas=2, rank=r, shuffle=True, seed=0)) for r in range(2)]
    order = [i for s in range(3) for r in range(2) for i in ranks[r][8 * s:8 * (s + 1)]]
    want = plain_records(torch.utils.data.Subset(ds, order), steps=3, every=1, batch=16)
    assert_same(got, want)
    assert all(r["samples"] == 16 for r in got)
