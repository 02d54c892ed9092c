from __future__ import annotations

import os

import numpy as np
import pytest
import torch


def compare(fast, slow, *, rtol: float, atol: float = 0.0, what: str = "") -> None:
    """The one comparison every fast-vs-reference test uses."""
    fast = np.asarray(fast.detach() if isinstance(fast, torch.Tensor) else fast, dtype=np.float64)
    slow = np.asarray(slow.detach() if isinstance(slow, torch.Tensor) else slow, dtype=np.float64)
    np.testing.assert_allclose(fast, slow, rtol=rtol, atol=atol, err_msg=what)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def one_thread():
    """Run a test with one intra-op thread (tiny tensors: threads only add contention)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def device():
    """Where the engine-vs-reference tests run: cpu, or $DEPTHSCOPE_TEST_DEVICE (benchmarks/gpu.sh sets cuda)."""
    from depthscope.sweep import resolve_device

    try:
        return resolve_device(os.environ.get("DEPTHSCOPE_TEST_DEVICE", "cpu"))
    except ValueError as e:
        pytest.fail(f"DEPTHSCOPE_TEST_DEVICE: {e}")
