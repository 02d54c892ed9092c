"""The residual-net flags of ``depthscope theory`` / ``depthscope vni`` and ``theory --arch residual``."""
from __future__ import annotations

import argparse
import dataclasses
import math

from ..cli import print_json


def add_residual_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--branch", default=None, choices=("one", "two"),
                   help="residual only: one = x + alpha phi(W x + b) (default), two = x + alpha V phi(W x + b)")
    p.add_argument("--alpha", type=float, default=None,
                   help="residual only: scale alpha of the residual branch (default 1)")


def check_residual_args(args) -> None:
    """--branch/--alpha belong to residual nets; a finite --alpha only."""
    if args.arch != "residual":
        for flag, v in (("--branch", args.branch), ("--alpha", args.alpha)):
            if v is not None:
                raise ValueError(f"{flag} applies to --arch residual only, got {flag} {v} with --arch {args.arch}")
    if args.alpha is not None and not math.isfinite(args.alpha):
        raise ValueError(f"--alpha must be a finite number, got {args.alpha}")


def residual_theory_for(spec, input_variance: float, samples: int, ff):
    """``ff`` (a feed-forward TheoryResult) with its VNI arrays replaced by the residual theory's."""
    from ..theory_residual import predict_residual

    th = predict_residual(spec.depth, spec.width, spec.activation, spec.init, branch=spec.branch, alpha=spec.alpha,
                          sigma_w2=spec.resolved_sigma_w2, sigma_b=spec.sigma_b, input_variance=input_variance,
                          samples=samples)
    return dataclasses.replace(ff, vni_finite=th.vni, vni_asymptotic=th.vni)


def cmd_theory_residual(args) -> int:
    from ..theory_residual import predict_residual

    alpha = 1.0 if args.alpha is None else args.alpha
    r = predict_residual(args.depth, args.width, args.activation, args.init, branch=args.branch or "one",
                         alpha=alpha, sigma_w2=args.sigma_w2, sigma_b=args.sigma_b,
                         input_variance=args.input_variance, samples=args.samples)
    layers = list(range(1, args.depth + 1)) if args.layer is None else [args.layer]
    sel = slice(None) if args.layer is None else slice(args.layer - 1, args.layer)
    doc = {
        "arch": "residual", "branch": r.branch, "alpha": r.alpha, "depth": r.depth, "width": r.width,
        "samples": args.samples, "activation": r.activation, "init": r.init, "sigma_w2": r.sigma_w2,
        "sigma_b": args.sigma_b, "input_variance": r.input_variance, "covered": r.covered,
        "growth_per_layer": r.growth_linear, "layers": layers, "q": r.q[sel].tolist(), "vni": r.vni[sel].tolist(),
        "m1": r.m1[sel].tolist(),
        "crossing@0.9": r.crossing(0.9) if math.isfinite(r.crossing(0.9)) else None,
    }
    if args.json:
        print_json(doc)
        return 0
    form = "x + alpha phi(W x + b)" if r.branch == "one" else "x + alpha V phi(W x + b)"
    print(f"residual {form}, alpha = {r.alpha:g}, {r.activation}, {r.init} init, depth {r.depth}, width {r.width}, "
          f"sigma_w^2 = {r.sigma_w2:g}, input variance {r.input_variance:g}, samples {args.samples or 'infinite'}")
    print(f"first-order growth of N VNI per layer (layer 1): {r.growth_linear:.6g}")
    if not r.covered:
        print("warning: a one-layer branch with E phi != 0 adds its mean along one direction every layer; the "
              "theory does not cover it (measured VNI rises far faster; docs/theory.md, 'Residual nets')")
    print(f"{'layer':>6} {'q_l':>10} {'VNI':>10} {'m1':>10}")
    for i, l in enumerate(layers):
        print(f"{l:6d} {doc['q'][i]:10.4g} {doc['vni'][i]:10.4g} {doc['m1'][i]:10.4g}")
    return 0
