"""depthscope.watch under data parallelism: statistics of the whole global batch, rank 0 writes.

::

    from depthscope.integrations.distributed import distributed_watch
    ddp = DistributedDataParallel(model)
    with distributed_watch(model, every=50, optimizer=opt, run_dir="runs/a") as w:
        ...   # the usual DDP loop; every rank runs it

With ``ranks="gather"`` (the default when a process group is initialised), each
scheduled step's captured rows of every watched module are gathered across ranks
(``all_gather``, rank order) before the statistics are computed, so VNI, ``act_mean``
and ``act_var`` are those of the global batch, and every rank holds the same records.
The output-gradient norms are summed over ranks and divided by the world size W:
DDP's averaged parameter gradient is the gradient of the mean of the rank losses,
whose gradient reaching a sample's output is 1/W of its rank's, so ``out_grad_rms``
is that of the global loss, as a single process on the concatenated batch records it.
``grad_norm`` / ``sigma_w2`` read ``p.grad`` and the weights, already equal on all
ranks under DDP. ``sigma_w2_mu1`` read through a norm (mu_1 at the activation's input)
and ``token_collapse`` (``collapse=True``) add each rank's float64 sums and counts. The
numbers equal a single process on the concatenated batch when no output is subsampled
(each rank's rows and their total at most ``max_rows``) and, for token collapse, every
sequence is read (``token_sequences`` at least the global batch); otherwise each rank's
sample of ``max_rows`` rows is pooled and subsampled again, and token collapse averages
up to ``token_sequences`` sequences of each rank.

``ranks="per_rank"``: no communication; each rank records its own batch.

In both modes only rank 0 writes (store, CSV, TensorBoard, ``writers=``); the other
ranks keep their records in ``w.records``. The gather is a collective call made on
every scheduled step by every rank, captured or not (a rank whose passes were paused
or that saw no batch sends nothing and still takes part), so ``optimizer.step()`` /
``w.step()`` and ``detach()`` must be reached by all ranks together, as DDP's own
gradient all-reduce already requires.

FSDP is refused (:func:`check_supported`): its parameters are shards, so ``grad_norm``,
``grad_rms`` and ``sigma_w2`` would describe one rank's shard.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from depthscope.watch import Watch, _Capture

RANKS = ("gather", "per_rank")


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def rank() -> int:
    """This process' global rank (0 without an initialised process group)."""
    d = _dist()
    return d.get_rank() if d is not None else 0


def world_size() -> int:
    """The number of processes in the default group (1 without an initialised process group)."""
    d = _dist()
    return d.get_world_size() if d is not None else 1


def check_supported(model: nn.Module) -> None:
    """Raise a one-line ValueError when ``model`` is sharded by FSDP (FSDP1 wrapper or FSDP2 DTensor parameters)."""
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    except ImportError:  # torch built without distributed
        return
    sharded = any(isinstance(m, FSDP) or type(m).__name__.startswith("FSDP") for m in model.modules())
    if not sharded:
        try:
            from torch.distributed.tensor import DTensor
        except ImportError:
            DTensor = ()  # type: ignore[assignment]
        sharded = bool(DTensor) and any(isinstance(p, DTensor) for p in model.parameters())
    if sharded:
        raise ValueError("depthscope.watch does not support FSDP-sharded models: grad_norm, grad_rms and "
                         "sigma_w2 would describe one rank's parameter shard; watch the model under DDP, or "
                         "watch an unsharded copy")


def gather_captures(w: Watch, pending: dict[int, Any]) -> dict[int, Any]:
    """``Watch.sync`` for ``ranks="gather"``: this step's captures of every rank, pooled in rank order.

    Two collectives per scheduled step whatever was captured: one ``all_gather_object`` of
    each rank's (rows, nodes, calls, output-gradient sum of squares, numel, dtype, the
    mu_1 sum and count through a norm, the token-collapse sum and count) per watched
    module, then one ``all_gather`` per row dtype of every rank's rows flattened and
    zero-padded to the longest. The sums are added over ranks: sigma_w2_mu1 through a
    norm and token collapse are those of the global batch.
    """
    dist = _dist()
    if dist is None:
        return pending
    world = dist.get_world_size()
    local: dict[int, torch.Tensor] = {}
    meta: dict[int, tuple] = {}
    for ww in w.watched:
        cap = pending.get(ww.layer)
        if cap is None or not cap.rows:
            continue
        x = torch.cat(cap.rows) if len(cap.rows) > 1 else cap.rows[0]
        local[ww.layer] = x
        sq = float(torch.stack([g.to(torch.float64) for g in cap.grad_norms]).pow(2).sum()) if cap.grad_norms else None
        # the float64 sums behind sigma_w2_mu1 read through a norm (phi'(h)^2 over the activation's
        # input) and behind token collapse (over the sequences read): summed over ranks below
        mu1 = float(cap.mu1_sum) if cap.mu1_n else None
        tc = float(cap.tc_sum) if cap.tc_n else None
        meta[ww.layer] = (x.shape[0], x.shape[1], cap.calls, sq, cap.grad_numel, str(x.dtype).removeprefix("torch."),
                          mu1, cap.mu1_n, tc, cap.tc_n)
    metas: list[Any] = [None] * world
    dist.all_gather_object(metas, meta)
    layers = [ww.layer for ww in w.watched if any(ww.layer in m for m in metas)]
    if not layers:
        return {}
    device = next((x.device for x in local.values()), _default_device(w))
    dtypes = sorted({m[layer][5] for m in metas for layer in layers if layer in m})
    rows: dict[tuple[int, int], torch.Tensor] = {}  # (rank, layer) -> rows
    for dt in dtypes:
        dtype = getattr(torch, dt)
        mine = [local[layer].reshape(-1) for layer in layers if layer in local and meta[layer][5] == dt]
        sizes = [sum(m[layer][0] * m[layer][1] for layer in layers if layer in m and m[layer][5] == dt)
                 for m in metas]
        flat = torch.zeros(max(sizes), dtype=dtype, device=device)
        if mine:
            torch.cat(mine, out=flat[:sizes[rank()]])
        out = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(out, flat)
        for r, m in enumerate(metas):
            off = 0
            for layer in layers:
                if layer in m and m[layer][5] == dt:
                    n, d = m[layer][0], m[layer][1]
                    rows[(r, layer)] = out[r][off:off + n * d].view(n, d)
                    off += n * d
    merged: dict[int, Any] = {}
    for layer in layers:
        have = [(r, m[layer]) for r, m in enumerate(metas) if layer in m]
        nodes = {mm[1] for _, mm in have}
        if len(nodes) > 1:  # the same module with different widths on different ranks: keep rank order's first
            have = [(r, mm) for r, mm in have if mm[1] == have[0][1][1]]
        cap = _Capture()
        cap.rows = [torch.cat([rows[(r, layer)] for r, _ in have])]
        cap.calls = max(mm[2] for _, mm in have)  # calls per rank, as one process on the whole batch counts them
        sqs = [mm[3] for _, mm in have if mm[3] is not None]
        if sqs:
            # the global loss is the mean of the rank losses: its output gradient is 1/W of a rank's
            cap.grad_norms = [torch.tensor(sum(sqs), dtype=torch.float64).sqrt() / world]
            cap.grad_numel = sum(mm[4] for _, mm in have if mm[3] is not None)
        for total, count, i in (("mu1_sum", "mu1_n", 6), ("tc_sum", "tc_n", 8)):
            parts = [(mm[i], mm[i + 1]) for _, mm in have if mm[i] is not None]
            if parts:  # a sum over every rank's entries (sequences), as one process sums the whole batch
                setattr(cap, total, torch.tensor(sum(v for v, _ in parts), dtype=torch.float64, device=device))
                setattr(cap, count, sum(n for _, n in parts))
        merged[layer] = cap
    return merged


def _default_device(w: Watch) -> torch.device:
    p = next(w.model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def distributed_watch(model: nn.Module, *, ranks: str = "gather", **kwargs: Any) -> Watch:
    """A :class:`~depthscope.watch.Watch` for data-parallel training: ``ranks`` 'gather' or 'per_rank'.

    Keyword arguments are those of :func:`depthscope.watch`; on ranks other than 0 the
    writers (``run_dir``, ``csv``, ``tensorboard``, ``writers``) are dropped. Without an
    initialised process group this is a plain watch. Refuses FSDP (:func:`check_supported`).
    """
    if ranks not in RANKS:
        raise ValueError(f"ranks must be one of {', '.join(RANKS)}, got {ranks!r}")
    check_supported(model)
    if rank() != 0:
        kwargs.update(run_dir=None, csv=None, tensorboard=None, writers=())
    w = Watch(model, **kwargs)
    if ranks == "gather" and world_size() > 1:
        w.sync = gather_captures
    return w
