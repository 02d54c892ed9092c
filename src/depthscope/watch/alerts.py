"""Alerts: the rules that turn a step's records into warnings (pure functions of the records)."""
from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: Every kind of alert, in the order they are checked.
KINDS = ("vni", "nonfinite_grad", "zero_grad", "vanishing_grad", "exploding_grad")


@dataclass
class Alert:
    """One warning: ``kind`` is one of :data:`KINDS`."""

    step: int
    layer: int
    name: str
    kind: str
    value: float
    message: str


def grad_findings(recs: Sequence[dict], ratio: float, previous: Mapping[int, float],
                  measured: set[tuple[int, str]]) -> list[tuple[dict, str, str]]:
    """[(record, kind, message)] of the gradient rules over one step's records.

    * ``nonfinite_grad``: grad_rms or out_grad_rms is inf, or NaN where it was measured
      (``measured`` holds (layer, quantity) of the gradient numbers the step measured; a NaN
      elsewhere only means that no gradient reached the module).
    * ``zero_grad``: grad_rms is exactly 0 (a dead or zero-initialised path: no gradient at all).
    * ``vanishing_grad``: grad_rms < m / ratio, with m the median of grad_rms over the modules of
      the step whose grad_rms is finite and > 0 (the median of the log-norms: exact zeros and
      non-finite values are their own alerts and never pull it down).
    * ``exploding_grad``: grad_rms > m * ratio and, for a module recorded before, also
      > ratio * its own grad_rms at the previous record (``previous``: layer -> grad_rms).

    Why the second condition: one step's cross-section cannot tell a few modules with large
    gradients from many with small ones. A ResNet with zero-initialised last BN gammas
    (timm's ``zero_init_last``) has most block convs at ~1e-5 of the others right after the
    first steps, the median falls among them and the stem, the downsampling convs and the
    head look 100x too large although nothing grew. A robust scale (MAD) on the log-norms does
    not help there: the small group is the majority, so the MAD is its own small spread.
    Exploding means growing: a module must also have grown ``ratio``-fold since it was last
    recorded. A module seen for the first time is judged on the cross-section alone.
    """
    out: list[tuple[dict, str, str]] = []
    grads = [r for r in recs if (r["layer"], "grad_rms") in measured or (r["layer"], "out_grad_rms") in measured]
    pos = [r["grad_rms"] for r in grads if math.isfinite(r["grad_rms"]) and r["grad_rms"] > 0]
    med = statistics.median(pos) if len(pos) >= 2 else float("nan")
    for r in grads:
        g, og = r["grad_rms"], r["out_grad_rms"]
        if any(math.isinf(v) or (math.isnan(v) and (r["layer"], k) in measured) for k, v in
               (("grad_rms", g), ("out_grad_rms", og))):
            out.append((r, "nonfinite_grad", f"non-finite gradient (grad_rms = {g}, out_grad_rms = {og})"))
        elif g == 0.0:
            out.append((r, "zero_grad", "gradient exactly zero (grad_rms = 0: a dead or zero-initialised path)"))
        elif math.isfinite(g) and med > 0:
            if g < med / ratio:
                out.append((r, "vanishing_grad", f"vanishing gradient: grad_rms = {g:.3g} < median {med:.3g} / {ratio:g}"))
            elif g > med * ratio:
                before = previous.get(r["layer"])
                if before is None or not (before > 0) or g > ratio * before:
                    since = "" if before is None else f" (grad_rms {before:.3g} at its previous record)"
                    out.append((r, "exploding_grad",
                                f"exploding gradient: grad_rms = {g:.3g} > median {med:.3g} x {ratio:g}{since}"))
    return out
