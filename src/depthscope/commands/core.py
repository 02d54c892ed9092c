"""``depthscope theory`` and ``depthscope vni``: predicted and measured VNI per layer."""
from __future__ import annotations

import argparse

import numpy as np

from ..cli import nonneg_float, nonneg_int, positive_int, print_json
from ..measure import load_inputs, measure_vni
from ..metrics.vni import debias_vni  # noqa: F401  (load_inputs/measure_vni: re-exported for old imports)


def _add_net_args(p: argparse.ArgumentParser) -> None:
    from ..activations import activation_names
    from ..inits import INITS

    p.add_argument("--depth", type=nonneg_int, required=True, help="number of hidden layers L (>= 0)")
    p.add_argument("--width", type=positive_int, required=True, help="nodes per hidden layer N (>= 1)")
    p.add_argument("--activation", default="tanh", help=f"one of: {', '.join(activation_names())}")
    p.add_argument("--init", default="gaussian", help=f"one of: {', '.join(INITS)}")
    p.add_argument("--sigma-w2", type=nonneg_float, default=None,
                   help="weight variance scale sigma_w^2 (default: the activation's critical value)")
    p.add_argument("--sigma-b", type=nonneg_float, default=0.0, help="std of the biases (default 0)")
    p.add_argument("--input-variance", type=nonneg_float, default=0.1,
                   help="per-feature variance of the inputs sigma_x^2 (default 0.1, as in the thesis)")
    p.add_argument("--layer", type=positive_int, default=None, help="report only this layer (1..L)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def _add_residual_args(p: argparse.ArgumentParser) -> None:
    from .residual import add_residual_args

    add_residual_args(p)


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("theory", help="mean-field predictions: q*, chi, mu1, mu2, s1, VNI per layer, m1, m2",
                       description="Predictions of the thesis' theory for a random net (no sampling).")
    _add_net_args(t)
    t.add_argument("--form", choices=("finite", "jacobian", "asymptotic"), default="finite",
                   help="VNI formula: finite-width covariance form (default; the radial-angular model for relu), "
                   "jacobian (eq. 3.7 summed over each layer's own q_l) or asymptotic (eq. 3.7 at q*)")
    t.add_argument("--in-features", type=positive_int, default=None,
                   help="input features P: the first weight matrix is N x P (default: the width)")
    t.add_argument("--samples", type=positive_int, default=None,
                   help="also predict what a measurement from this many samples reads (vni_sampled; for --arch residual: "
                   "adds their finite-sample excess)")
    t.add_argument("--signal", action="store_true",
                   help="add the signal-propagation quantities at q*: c*, chi_1, chi_c, xi_q, xi_c, phase (seconds)")
    t.add_argument("--phase-diagram", default=None, metavar="PNG",
                   help="draw the order-to-chaos phase diagram (sigma_w^2 0.25..4 x sigma_b^2 0..0.5) with VNI-at-"
                   "depth contours for this depth, width, activation and init into this file")
    t.add_argument("--arch", default="feedforward", choices=("feedforward", "residual"),
                   help="feedforward (the thesis' theory) or residual (docs/theory.md, 'Residual nets')")
    _add_residual_args(t)
    t.set_defaults(func=cmd_theory)

    v = sub.add_parser("vni", help="measured VNI and effective nodes per layer beside the prediction",
                       description="Measure the VNI (eq. 3.4) of every layer of random nets over several seeds.")
    _add_net_args(v)
    v.add_argument("--arch", default="feedforward", help="feedforward, residual or volume")
    _add_residual_args(v)
    v.add_argument("--inputs", default="gaussian", help="gaussian, mnist or fashion-mnist")
    v.add_argument("--samples", type=positive_int, default=1000, help="input samples per net (default 1000)")
    v.add_argument("--seeds", type=positive_int, default=20, help="nets (seeds 0..S-1) to average (default 20)")
    v.add_argument("--preprocess", default=None,
                   help="for mnist/fashion-mnist: center (pixels in [0, 1] minus their mean; the default) or "
                   "whiten (PCA whitening: uncorrelated features of variance --input-variance, as the theory "
                   "assumes)")
    v.add_argument("--data-dir", default=None, help="directory with the MNIST/Fashion-MNIST IDX files")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    v.set_defaults(func=cmd_vni)


def _validate(args) -> None:
    """Every flag checked before any computation: the spec (via NetSpec) and the sizes (via the memory estimate)."""
    from ..memory import check_fits, theory_bytes
    from ..nets import NetSpec

    # NetSpec checks activation, init, arch, sigma_w2 and sigma_b (finite, and sigma_b^2 finite)
    NetSpec(depth=args.depth, width=args.width, activation=args.activation, init=args.init,
            sigma_w2=args.sigma_w2, sigma_b=args.sigma_b, arch=getattr(args, "arch", "feedforward"))
    if args.layer is not None and args.layer > args.depth:
        raise ValueError(f"--layer must lie in 1..{args.depth} (the depth), got {args.layer}")
    check_fits(theory_bytes(args.depth), f"--depth {args.depth} (the theory's per-layer arrays)")


def _pick(arr, layer):
    return arr if layer is None else arr[layer - 1: layer]


def _layers(depth: int, layer: int | None) -> list[int]:
    return list(range(1, depth + 1)) if layer is None else [layer]


def cmd_theory(args) -> int:
    from ..theory import predict

    _validate(args)
    if args.samples is not None and args.samples < 2:
        raise ValueError(f"--samples must be >= 2 to estimate a covariance, got {args.samples}")
    if args.phase_diagram:
        import os

        parent = os.path.dirname(os.path.abspath(args.phase_diagram))
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            raise ValueError(f"--phase-diagram: directory {parent!r} does not exist or is not writable")
        if not args.phase_diagram.lower().endswith((".png", ".svg", ".pdf")):
            raise ValueError(f"--phase-diagram must end in .png, .svg or .pdf, got {args.phase_diagram!r}")
    from .residual import check_residual_args, cmd_theory_residual

    check_residual_args(args)
    if args.arch == "residual":
        return cmd_theory_residual(args)
    r = predict(args.depth, args.width, args.activation, args.init, args.sigma_w2, args.sigma_b,
                args.input_variance, in_features=args.in_features, samples=args.samples)
    vni = {"finite": r.vni_finite, "jacobian": r.vni_jacobian, "asymptotic": r.vni_asymptotic}[args.form]
    layers = _layers(args.depth, args.layer)
    doc = {
        "depth": r.depth, "width": r.width, "activation": r.activation, "init": r.init,
        "sigma_w2": r.sigma_w2, "sigma_b": args.sigma_b, "input_variance": r.input_variance,
        "in_features": r.in_features, "samples": r.samples, "form": args.form, "finite_form": r.finite_form,
        "q_star": r.q_star, "chi": r.chi, "mu1": r.mu1, "mu2": r.mu2, "s1": r.s1,
        "layers": layers,
        "q": _pick(r.q, args.layer), "mu1_layer": _pick(r.mu1_layers, args.layer),
        "mu2_layer": _pick(r.mu2_layers, args.layer), "kappa": _pick(r.kappa, args.layer),
        "vni": _pick(vni, args.layer), "vni_finite": _pick(r.vni_finite, args.layer),
        "vni_jacobian": _pick(r.vni_jacobian, args.layer), "vni_asymptotic": _pick(r.vni_asymptotic, args.layer),
        "vni_sampled": _pick(r.vni_sampled, args.layer),
        "cosine": _pick(r.cosine, args.layer), "norm_variance": _pick(r.norm_variance, args.layer),
        "radial_fraction": _pick(r.radial_fraction, args.layer), "vni_angular": _pick(r.vni_angular, args.layer),
        "effective_nodes": _pick(r.effective_nodes, args.layer),
        "m1": _pick(r.m1, args.layer), "m2": _pick(r.m2, args.layer),
    }
    if args.signal:
        from ..signal import signal

        sg = signal(r.activation, r.sigma_w2, r.sigma_b2)
        doc["signal"] = {k: getattr(sg, k) for k in ("c_star", "chi_1", "chi_c", "xi_q", "xi_c", "phase")}
    if args.phase_diagram:
        from ..signal import draw_phase_diagram, phase_diagram

        grid = phase_diagram(r.activation, np.linspace(0.25, 4.0, 16), np.linspace(0.0, 0.5, 6), max(r.depth, 1),
                             r.width, r.init, r.input_variance)
        draw_phase_diagram(grid, args.phase_diagram, f"{r.activation}, {r.init}, depth {max(r.depth, 1)}, "
                           f"width {r.width}: order | chaos (red: chi_1 = 1)")
        doc["phase_diagram"] = args.phase_diagram
    if args.json:
        print_json(doc)
        return 0
    print(f"{r.activation}, {r.init} init, depth {r.depth}, width {r.width}, in_features {r.in_features}, "
          f"sigma_w^2 = {r.sigma_w2:g}, sigma_b = {args.sigma_b:g}, input variance {r.input_variance:g}")
    print(f"q* = {r.q_star:.6g}   chi = sigma_w^2 mu1(q*) = {r.chi:.6g}   mu1(q*) = {r.mu1:.6g}   "
          f"mu2(q*) = {r.mu2:.6g}   s1 = {r.s1:g}")
    what = {"finite": {"zero-mean": "covariance map of a zero-mean net", "relu": "radial-angular relu model",
                       "none": f"not covered for {r.activation} with sigma_b = {args.sigma_b:g}: use --form "
                               "jacobian or asymptotic"}[r.finite_form],
            "jacobian": "eq. 3.7 summed over each layer's q_l", "asymptotic": "eq. 3.7 at q*"}[args.form]
    print(f"VNI form: {args.form} ({what})" + ("" if args.form == "finite" else
          "; first order in L/N, values above 1 mean it has left its range (N >> L)"))
    if "signal" in doc:
        sd = doc["signal"]
        print(f"signal: {sd['phase']}, c* = {sd['c_star']:.6g}, chi_1 = {sd['chi_1']:.6g}, chi_c = {sd['chi_c']:.6g}, "
              f"xi_q = {sd['xi_q']:.4g}, xi_c = {sd['xi_c']:.4g}")
    if args.phase_diagram:
        print(f"phase diagram: {args.phase_diagram}")
    print(f"{'layer':>6} {'q_l':>10} {'VNI':>10} {'eff.nodes':>10} {'m1':>10} {'m2':>10}")
    for i, l in enumerate(layers):
        print(f"{l:6d} {doc['q'][i]:10.4g} {doc['vni'][i]:10.4g} {doc['effective_nodes'][i]:10.4g} "
              f"{doc['m1'][i]:10.4g} {doc['m2'][i]:10.4g}")
    return 0


def cmd_vni(args) -> int:
    from ..nets import NetSpec
    from ..theory import predict

    _validate(args)
    from ..data import PREPROCESS

    if args.inputs not in ("gaussian", "mnist", "fashion-mnist"):
        raise ValueError(f"--inputs must be gaussian, mnist or fashion-mnist, got {args.inputs!r}")
    if args.preprocess is not None and args.preprocess not in PREPROCESS:
        raise ValueError(f"--preprocess must be one of {', '.join(PREPROCESS)}, got {args.preprocess!r}")
    if args.preprocess is not None and args.inputs == "gaussian":
        raise ValueError(f"--preprocess applies to mnist and fashion-mnist inputs only (gaussian inputs are "
                         f"i.i.d. already), got --preprocess {args.preprocess} with --inputs gaussian")
    if args.samples < 2:
        raise ValueError(f"--samples must be >= 2 to estimate a covariance, got {args.samples}")
    from ..memory import check_fits, vni_bytes

    # refused before the inputs are loaded: layer 1 reads at most 784 pixels (whitening keeps fewer)
    bound = NetSpec(depth=args.depth, width=args.width, init=args.init, arch=args.arch,
                    in_features=None if args.inputs == "gaussian" else 784)
    check_fits(vni_bytes(bound, args.samples), f"--width {args.width} with --samples {args.samples}")
    preprocess = None if args.inputs == "gaussian" else (args.preprocess or "center")
    fixed, note = None, f"{args.samples} i.i.d. N(0, {args.input_variance:g}) samples per seed"
    if preprocess is not None:
        fixed, note = load_inputs(args.inputs, args.samples, args.input_variance, args.data_dir, preprocess)
    # layer 1's fan-in is the input's feature count: 784 pixels, or the k directions whitening kept
    in_features = None if fixed is None else int(fixed.shape[1])
    from .residual import check_residual_args, residual_theory_for

    check_residual_args(args)
    spec = NetSpec(depth=args.depth, width=args.width, activation=args.activation, init=args.init,
                   sigma_w2=args.sigma_w2, sigma_b=args.sigma_b, arch=args.arch, in_features=in_features,
                   branch=args.branch or "one", alpha=args.alpha)
    vals = measure_vni(spec, args.inputs, args.samples, args.seeds, args.input_variance, args.data_dir,
                       quiet=args.quiet or args.json, layers=None if args.layer is None else [args.layer],
                       fixed_inputs=fixed)
    # Whitened inputs have variance --input-variance per feature, as the theory assumes; centred pixels are
    # correlated and of their own variance, so for them --input-variance is only a stand-in for sigma_x^2.
    r = predict(args.depth, args.width, args.activation, args.init, spec.resolved_sigma_w2, args.sigma_b,
                args.input_variance)
    if spec.arch == "residual":  # the feed-forward theory does not describe a residual net; its own does
        r = residual_theory_for(spec, args.input_variance, args.samples, r)
    mean, std = vals.mean(0), vals.std(0, ddof=1) if args.seeds > 1 else np.zeros(args.depth)
    eff = args.width * (1 - vals) + 1
    layers = _layers(args.depth, args.layer)
    doc = {
        "depth": args.depth, "width": args.width, "activation": args.activation, "init": args.init,
        "arch": args.arch, "sigma_w2": spec.resolved_sigma_w2, "sigma_b": args.sigma_b, "inputs": args.inputs,
        "preprocess": preprocess, "in_features": spec.n_in, "inputs_note": note,
        "input_variance": args.input_variance, "samples": args.samples, "seeds": args.seeds, "layers": layers,
        "vni_mean": _pick(mean, args.layer), "vni_std": _pick(std, args.layer),
        "vni_debiased_mean": _pick(debias_vni(vals, args.samples).mean(0), args.layer),
        "effective_nodes_mean": _pick(eff.mean(0), args.layer),
        "effective_nodes_std": _pick(eff.std(0, ddof=1) if args.seeds > 1 else np.zeros(args.depth), args.layer),
        "participation_ratio_mean": _pick((1.0 / vals).mean(0), args.layer),
        "vni_theory": _pick(r.vni_finite, args.layer),
        "vni_theory_asymptotic": _pick(r.vni_asymptotic, args.layer),
    }
    if args.json:
        print_json(doc)
        return 0
    print(f"{args.activation}, {args.init} init, {args.arch}, depth {args.depth}, width {args.width}, "
          f"{args.seeds} seeds; inputs: {note}")
    print(f"{'layer':>6} {'VNI mean':>10} {'± std':>9} {'theory':>10} {'eff.nodes':>10} {'1/VNI':>9}")
    for i, l in enumerate(layers):
        print(f"{l:6d} {doc['vni_mean'][i]:10.4g} {doc['vni_std'][i]:9.3g} {doc['vni_theory'][i]:10.4g} "
              f"{doc['effective_nodes_mean'][i]:10.4g} {doc['participation_ratio_mean'][i]:9.4g}")
    return 0
