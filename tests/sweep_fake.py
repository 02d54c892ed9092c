"""A tiny stand-in trainer with train_group's signature, to test sweep MECHANICS only
(resume, kills, backends). Results are a deterministic function of the spec.

DEPTHSCOPE_FAKE_DELAY (seconds per run) slows it down so tests can kill it mid-sweep.
DEPTHSCOPE_FAKE_GATE (a path): after a group's first run, wait until that file exists (a test holds
every group mid-way, deterministically). DEPTHSCOPE_FAKE_LOG (a path): append "depth lr seed" per run
once its result was handed on (a test counts how often each run was trained).
A run with lr == 0.777 makes its whole group raise (a crash); lr >= 1 "diverges".
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from depthscope.store import Value


@dataclass
class FakeResult:
    spec: object
    success: bool
    diverged: bool
    reason: str | None
    seconds: float

    def to_values(self):
        s = self.spec
        vals = [Value("success", float(self.success)), Value("diverged", float(self.diverged))]
        for layer in range(1, s.depth + 1):
            vals.append(Value("vni_final", min(1.0, s.lr * layer), layer=layer))
            vals.append(Value("sigma_w2_mu1", 1.0, layer=layer))
        return vals


def fake_train_group(specs, x, y, probe, device="cpu", on_result=None):
    delay = float(os.environ.get("DEPTHSCOPE_FAKE_DELAY", "0"))
    assert len({s.group_key() for s in specs}) == 1, "a group must share group_key()"
    if any(s.lr == 0.777 for s in specs):
        raise RuntimeError("boom")
    gate = os.environ.get("DEPTHSCOPE_FAKE_GATE")
    log = os.environ.get("DEPTHSCOPE_FAKE_LOG")
    out = []
    for i, s in enumerate(specs):
        while gate and i > 0 and not os.path.exists(gate):
            time.sleep(0.05)
        t0 = time.time()
        time.sleep(delay)
        diverged = s.lr >= 1
        r = FakeResult(s, success=(not diverged and s.lr * s.depth < 1.0), diverged=diverged,
                       reason="loss is nan at epoch 1" if diverged else None, seconds=time.time() - t0)
        if on_result is not None:
            on_result(r)
        if log:
            with open(log, "a") as f:  # one short O_APPEND write per line: safe from several processes
                f.write(f"{s.depth} {s.lr} {s.seed}\n")
        out.append(r)
    return out
