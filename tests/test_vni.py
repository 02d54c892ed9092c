"""VNI (eq. 3.4/3.5) against its brute-force double sum, and its limits."""
import math

import pytest
import torch

from conftest import compare
from depthscope.metrics import (
    CovarianceAccumulator,
    debias_vni,
    effective_nodes,
    participation_ratio,
    rho_squared,
    vni,
    vni_from_covariance,
)


def vni_double_sum(x: torch.Tensor) -> float:
    """Eq. 3.4 literally: sum_ij rho_ij^2 s_i^2 s_j^2 / sum_ij s_i^2 s_j^2, with explicit loops."""
    x = x.to(torch.float64)
    n = x.shape[1]
    mean = x.mean(0)
    var = [float(((x[:, i] - mean[i]) ** 2).mean()) for i in range(n)]
    num = den = 0.0
    for i in range(n):
        for j in range(n):
            cov = float(((x[:, i] - mean[i]) * (x[:, j] - mean[j])).mean())
            rho2 = cov**2 / (var[i] * var[j]) if var[i] * var[j] > 0 else 0.0  # a constant node: weight 0
            num += rho2 * var[i] * var[j]
            den += var[i] * var[j]
    return num / den


@pytest.mark.parametrize("samples,nodes", [(50, 7), (7, 50), (30, 30), (2, 5)], ids=["tall", "wide", "square", "two-samples"])
def test_vni_equals_double_sum(samples, nodes, gen):
    mix = torch.randn(nodes, nodes, generator=gen, dtype=torch.float64)
    x = torch.randn(samples, nodes, generator=gen, dtype=torch.float64) @ mix
    compare(vni(x), vni_double_sum(x), rtol=1e-10)


def test_vni_limits(gen):
    # Collinear nodes: R_sq = 1.
    z = torch.randn(100, 1, generator=gen, dtype=torch.float64)
    scales = torch.linspace(0.5, 3.0, 8, dtype=torch.float64)
    compare(vni(z * scales), 1.0, rtol=1e-12)
    # Independent equal-variance nodes, many samples: R_sq -> 1/N (+ 1/S sampling excess).
    x = torch.randn(20000, 10, generator=gen, dtype=torch.float64)
    assert abs(float(vni(x)) - 0.1) < 2e-3
    assert float(vni(x)) >= 0.1 - 1e-12


def test_vni_is_scale_and_shift_invariant(gen):
    x = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    compare(vni(3.0 * x + 7.0), vni(x), rtol=1e-12)


def test_rho_squared_matches_corrcoef_and_reweights_to_vni(gen):
    x = torch.randn(60, 5, generator=gen, dtype=torch.float64) @ torch.randn(5, 5, generator=gen, dtype=torch.float64)
    r2 = rho_squared(x)
    compare(r2, torch.corrcoef(x.T) ** 2, rtol=1e-10)
    v = x.var(0)
    compare((r2 * v[:, None] * v[None, :]).sum() / (v.sum() ** 2), vni(x), rtol=1e-10)


def test_rho_squared_constant_node_is_uncorrelated(gen):
    x = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    x[:, 1] = 2.0
    r2 = rho_squared(x)
    assert r2[1, 0] == 0 and r2[0, 1] == 0 and r2[1, 1] == 1


def test_accumulator_matches_batch_vni(gen):
    x = torch.randn(257, 12, generator=gen, dtype=torch.float64) @ torch.randn(12, 12, generator=gen, dtype=torch.float64)
    acc = CovarianceAccumulator(12)
    for chunk in torch.split(x, [1, 100, 56, 100]):
        acc.update(chunk)
    compare(acc.covariance(), torch.cov(x.T), rtol=1e-10)
    compare(acc.vni(), vni(x), rtol=1e-10)
    compare(vni_from_covariance(torch.cov(x.T)), vni(x), rtol=1e-10)


def test_debias_vni_removes_the_wishart_excess(gen):
    # Independent nodes: the raw estimate reads ~1/N + 1/S, the debiased one ~1/N.
    raw = torch.stack([vni(torch.randn(100, 40, generator=gen, dtype=torch.float64)) for _ in range(200)]).mean()
    assert float(raw) == pytest.approx(1 / 40 + 1 / 100, rel=0.05)
    assert float(debias_vni(raw, 100)) == pytest.approx(1 / 40, rel=0.05)


def test_debias_vni_formula_uses_the_s_minus_1_degrees_of_freedom():
    # (R - 1/m) / (1 + 1/m), m = S - 1: exact numbers, so S or S - 2 cannot pass
    assert debias_vni(0.5, 4) == pytest.approx((0.5 - 1 / 3) / (1 + 1 / 3), rel=1e-15)
    assert debias_vni(0.25, 2) == pytest.approx(-0.375, rel=1e-15)
    with pytest.raises(ValueError, match="samples must be >= 2, got 1"):
        debias_vni(0.5, 1)


@pytest.mark.parametrize("samples,nodes", [(5, 20), (10, 40)])
def test_mean_vni_of_independent_nodes_is_the_wishart_mean_with_s_minus_1_dof(samples, nodes, gen):
    """E R_hat = (m + 1 + N) / (m N + 2) exactly for i.i.d. N(0, I) rows, m = S - 1 (the centred Wishart).

    At S = 5 the m = S - 1 and m = S predictions differ by 16%, 50 standard errors of this
    Monte Carlo mean: what tells debias_vni's S - 1 from S. The debiased mean then sits
    within the second-order term 2/(mN) of 1/N, the S-debiased one 75% above it.
    """
    r = vni(torch.randn(20000, samples, nodes, generator=gen, dtype=torch.float64))
    m = samples - 1
    sem = float(r.std()) / math.sqrt(r.numel())
    assert abs(float(r.mean()) - (m + 1 + nodes) / (m * nodes + 2)) < 4 * sem
    assert abs(float(r.mean()) - (samples + 1 + nodes) / (samples * nodes + 2)) > 20 * sem
    assert abs(float(debias_vni(r.mean(), samples)) * nodes - 1) < 2.5 / m


def test_effective_nodes_and_participation_ratio():
    assert effective_nodes(1.0, 50) == 1.0
    assert math.isclose(effective_nodes(1 / 50, 50), 50.0)
    assert participation_ratio(0.25) == 4.0


@pytest.mark.parametrize("bad", [torch.zeros(5), torch.zeros(1, 4)], ids=["1d", "one-sample"])
def test_vni_rejects_bad_shapes(bad):
    with pytest.raises(ValueError, match="sample|matrix"):
        vni(bad)


# -- vni_moments: the float32 fast path of the watch, against the float64 reference -------------------------
def _ill_conditioned(name: str) -> torch.Tensor:
    """float32 activations that break naive float32 covariances; each named after what makes it hard."""
    g = torch.Generator().manual_seed(7)
    if name == "offset-1e4":  # a common offset 10^4 times the spread: E[x^2] - E[x]^2 loses every digit
        return (1e4 + torch.randn(3000, 24, generator=g)).float()
    if name == "scales-1e-4..1e4":  # node variances over 16 decades
        return torch.randn(2000, 30, generator=g) * torch.logspace(-4, 4, 30)
    if name == "collinear":  # rank one plus 1e-3 noise: VNI ~ 1 - 1e-6
        return torch.randn(2500, 1, generator=g) * torch.randn(1, 40, generator=g) + 1e-3 * torch.randn(2500, 40, generator=g)
    if name == "wide-offset":  # nodes > samples: the row-Gram path, with an offset
        return 50.0 + torch.randn(60, 700, generator=g) @ torch.randn(700, 700, generator=g) / 30
    if name == "tall-mixed":  # many rows (16 chunks), correlated nodes, offset and a constant node
        x = torch.randn(8192, 16, generator=g) @ torch.randn(16, 16, generator=g) + 300.0
        x[:, 3] = 7.0
        return x
    raise KeyError(name)


ILL = ["offset-1e4", "scales-1e-4..1e4", "collinear", "wide-offset", "tall-mixed"]


@pytest.mark.parametrize("chunk", [7, 512, 10**6], ids=lambda c: f"chunk{c}")
@pytest.mark.parametrize("name", ILL)
def test_vni_moments_float32_within_its_stated_bound_of_the_float64_reference(name, chunk):
    from depthscope.metrics.vni import vni_moments, vni_moments_error

    x = _ill_conditioned(name)
    assert x.dtype == torch.float32
    r, mean, var = vni_moments(x, chunk=chunk).tolist()
    xd = x.double()  # the reference sees exactly the same float32 numbers
    ref_r = float(vni(x))
    ref_var = float(xd.var(0, unbiased=False).mean())  # eq. 4.2's shared variance
    # the stated first-order bounds, with a chunk of the whole matrix for chunk=10**6
    k = min(chunk, max(x.shape))
    compare(r, ref_r, rtol=0, atol=vni_moments_error(k), what="R_sq")
    compare(var, ref_var, rtol=(k + 6) * 2.0**-24, what="shared variance")
    compare(mean, float(xd.mean()), rtol=0, atol=2.0**-24 * float((xd - xd.mean(0)).abs().max()) + 1e-12, what="mean")


def test_vni_moments_bound_is_not_vacuous():
    """The bound is tight enough to reject the naive float32 covariance E[x x^T] - m m^T that it replaces."""
    from depthscope.metrics.vni import vni_moments_error

    x = _ill_conditioned("offset-1e4")
    m = x.mean(0)
    c = x.T @ x / x.shape[0] - torch.outer(m, m)  # all in float32
    naive = float((c.double() ** 2).sum() / torch.diagonal(c.double()).sum() ** 2)
    assert abs(naive - float(vni(x))) > 100 * vni_moments_error(512)


def test_vni_moments_float64_and_half_inputs(gen):
    from depthscope.metrics.vni import vni_moments

    x = torch.randn(300, 20, generator=gen, dtype=torch.float64) @ torch.randn(20, 20, generator=gen, dtype=torch.float64)
    r, mean, var = vni_moments(x).tolist()  # float64 in, float64 arithmetic: the reference to rounding
    compare([r, mean, var], [float(vni(x)), float(x.mean()), float(x.var(0, unbiased=False).mean())], rtol=1e-12)
    h = x.to(torch.bfloat16)
    compare(vni_moments(h)[0], vni(h), rtol=0, atol=1e-5)
    assert math.isnan(float(vni_moments(torch.ones(5, 3))[0]))  # every node constant
    with pytest.raises(ValueError, match="at least 2 samples"):
        vni_moments(torch.ones(1, 3))
    with pytest.raises(ValueError, match="chunk must be >= 1, got 0"):
        vni_moments(x, chunk=0)


def test_vni_moments_of_a_batch_equals_one_call_per_matrix(gen):
    from depthscope.metrics.vni import vni_moments

    xs = [torch.randn(200, 12, generator=gen) @ torch.randn(12, 12, generator=gen) + 3.0 * k for k in range(4)]
    batched = vni_moments(torch.stack(xs))
    assert batched.shape == (4, 3) and batched.dtype == torch.float64
    compare(batched, torch.stack([vni_moments(x) for x in xs]), rtol=1e-6)
    compare(batched[:, 0], torch.stack([vni(x) for x in xs]), rtol=1e-6)
    wide = torch.randn(2, 3, 5, 40, generator=gen)  # any leading batch shape, row-Gram path
    compare(vni_moments(wide)[1, 2, 0], vni(wide[1, 2]), rtol=1e-6)


def test_vni_moments_overwrite_centres_in_place_with_the_same_numbers(gen):
    from depthscope.metrics.vni import vni_moments

    x = torch.randn(3, 100, 7, generator=gen) + 5.0
    keep = x.clone()
    ref = vni_moments(x)
    assert torch.equal(x, keep)  # the default leaves the input alone
    got = vni_moments(x, overwrite=True)
    assert torch.equal(got, ref)
    compare(x, keep - keep.mean(1, keepdim=True), rtol=0, atol=1e-5)  # x now holds X_c
    big = keep * 2.0**60  # a range over 2^40: rescaled by 2^-e, e the exponent of the largest range
    r = (big.amax(1) - big.amin(1)).amax(-1)
    scale = torch.exp2(-torch.frexp(r).exponent.float())[:, None, None]
    compare(vni_moments(big, overwrite=True)[:, 0], ref[:, 0], rtol=1e-6)
    compare(big, (keep - keep.mean(1, keepdim=True)) * 2.0**60 * scale, rtol=0, atol=1e-6)  # 2^-e X_c
    h = keep.to(torch.bfloat16)
    h_copy = h.clone()
    vni_moments(h, overwrite=True)  # not float32/64: converted, and the input is left alone
    assert torch.equal(h, h_copy)


# -- every VNI function agrees on degenerate inputs (issue 11 section 4) -------------------------------------
def _vni_functions():
    """name -> f(x float64 (S, N)) -> float, for every VNI function of the package."""
    from depthscope.ensemble import batched_vni
    from depthscope.metrics import jacobian_vni
    from depthscope.metrics.vni import vni_moments

    def accumulated(x):
        acc = CovarianceAccumulator(x.shape[1])
        for part in torch.split(x, max(1, x.shape[0] // 3)):
            acc.update(part)
        return acc.vni()

    def from_cov(x):
        if not torch.isfinite(x).all():
            return vni_from_covariance(torch.cov(x.T).reshape(x.shape[1], x.shape[1]))  # a non-finite covariance
        m = float(x.abs().max()) or 1.0  # the covariance of x / sqrt(m): entries of x's size, no overflow
        xc = x / m - (x / m).mean(0)
        xc[:, (x == x[0]).all(0)] = 0.0
        return vni_from_covariance(xc.T @ xc * m)

    def jac(x):  # J = X_c: tr((J J^T)^2) / tr(J J^T)^2 is the VNI of x's rows
        if not torch.isfinite(x).all():
            return jacobian_vni(x)
        m = float(x.abs().max()) or 1.0
        xc = x / m - (x / m).mean(0)
        xc[:, (x == x[0]).all(0)] = 0.0
        return jacobian_vni(xc * m)

    return {
        "vni": vni,
        "vni-float32": lambda x: vni(x.float()),
        "vni_moments": lambda x: vni_moments(x)[0],
        "vni_moments-float32": lambda x: vni_moments(x.float())[0],
        "batched_vni": lambda x: batched_vni(x[None])[0],
        "CovarianceAccumulator": accumulated,
        "vni_from_covariance": from_cov,
        "jacobian_vni": jac,
    }


def _degenerate_cases(seed: int):
    """(name, x float64, expected: 'nan' | 'raise' | a base matrix whose double-sum VNI is the answer)."""
    g = torch.Generator().manual_seed(seed)
    s = int(torch.randint(2, 40, (1,), generator=g))
    n = int(torch.randint(1, 12, (1,), generator=g))
    base = torch.randn(s, n, generator=g, dtype=torch.float64) @ torch.randn(n, n, generator=g, dtype=torch.float64)
    base = base + 10.0 * torch.randn(n, generator=g, dtype=torch.float64)  # an offset per node
    i, j = int(torch.randint(0, s, (1,), generator=g)), int(torch.randint(0, n, (1,), generator=g))
    value = float(torch.randn(1, generator=g, dtype=torch.float64)) * 10 ** int(torch.randint(-3, 4, (1,), generator=g))
    cases = [("plain", base, base)]
    if float(base.std(0).min()) > 1e-3 * float(base.std(0).max()):  # well inside float32's range of ratios
        for e in (200, -200, 19, -19):  # 1e+-19 is float32-representable: the float32 paths see it too
            cases.append((f"x1e{e}", base * 10.0**e, base))
    const = torch.full((s, n), value, dtype=torch.float64)  # a constant layer: tr C = 0
    cases.append(("constant", const, "nan"))
    some = base.clone()
    some[:, j] = value  # one constant node among varying ones: an ordinary VNI
    if n > 1:
        cases.append(("one-constant-node", some, some))
    for bad in (math.inf, -math.inf, math.nan):
        y = base.clone()
        y[i, j] = bad
        cases.append((f"holds-{bad}", y, "nan"))
    cases.append(("one-sample", base[:1], "raise"))
    return cases


@pytest.mark.parametrize("seed", range(30))
def test_every_vni_function_agrees_on_degenerate_inputs(seed):
    fns = _vni_functions()
    for case, x, expected in _degenerate_cases(seed):
        for name, f in fns.items():
            what = f"{name} on {case} {tuple(x.shape)}"
            float32 = "float32" in name
            if float32 and case in ("x1e200", "x1e-200"):
                continue  # not representable in float32
            if expected == "raise":
                if name in ("vni_from_covariance", "jacobian_vni"):
                    continue  # they take a covariance / a Jacobian, not samples
                with pytest.raises(ValueError, match="at least 2 samples"):
                    f(x)
                continue
            got = float(f(x))
            if isinstance(expected, str):
                assert math.isnan(got), what
                continue
            ref = vni_double_sum(expected)
            tol = 4 * vni_moments_error_512() if float32 else 1e-9
            assert abs(got - ref) <= tol, (what, got, ref)


def vni_moments_error_512() -> float:
    from depthscope.metrics.vni import vni_moments_error

    return vni_moments_error(512) + 2.0**-23  # + float32 rounding of x itself, which the reference does not see


def test_vni_per_layer_refuses_non_finite_inputs_and_reads_a_constant_layer_as_nan():
    from depthscope.metrics import vni_per_layer
    from depthscope.nets import NetSpec

    spec = NetSpec(depth=3, width=10, activation="tanh")
    x = torch.randn(50, 10, generator=torch.Generator().manual_seed(0))
    x[5, 3] = math.inf  # tanh(inf) = 1: the layers above would read ordinary VNIs
    with pytest.raises(ValueError, match=r"x holds 1 non-finite value\(s\) \(first inf at index \(5, 3\)\)"):
        vni_per_layer(spec, x)
    # input variance 0 with random biases: every layer constant across samples, VNI undefined (was 1.0)
    const = torch.zeros(50, 10)
    assert torch.isnan(vni_per_layer(NetSpec(depth=3, width=10, activation="tanh", sigma_b=0.5), const)).all()


def test_cli_vni_of_a_constant_layer_is_nan(capsys):
    import json

    from depthscope.cli import main

    rc = main(["vni", "--depth", "2", "--width", "8", "--input-variance", "0", "--sigma-b", "0.5", "--seeds", "2",
               "--samples", "20", "--json", "--quiet"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert all(v is None for v in doc["vni_mean"]), doc["vni_mean"]  # NaN is written as JSON null


@pytest.mark.parametrize("seed", range(30))
def test_vni_moments_float32_within_its_stated_bound_on_random_inputs(seed):
    """Random shapes, ranks, node scales over 3 decades and offsets up to 1e4: the fast path vs float64."""
    from depthscope.metrics.vni import vni_moments, vni_moments_error

    g = torch.Generator().manual_seed(1000 + seed)
    s, n = int(torch.randint(2, 1500, (1,), generator=g)), int(torch.randint(1, 120, (1,), generator=g))
    rank = int(torch.randint(1, n + 1, (1,), generator=g))
    x = torch.randn(s, rank, generator=g) @ torch.randn(rank, n, generator=g)
    x = x * torch.logspace(-float(torch.rand(1, generator=g)) * 3, 0, n)[torch.randperm(n, generator=g)]
    x = (x + float(torch.randn(1, generator=g)) * 10 ** float(torch.rand(1, generator=g) * 4)).float()
    for chunk in (7, 512):
        k = min(chunk, max(x.shape))
        r, _, var = vni_moments(x, chunk=chunk).tolist()
        compare(r, float(vni(x)), rtol=0, atol=vni_moments_error(k), what=f"R_sq chunk {chunk}")
        compare(var, float(x.double().var(0, unbiased=False).mean()), rtol=(math.sqrt(k) + 6) * 2.0**-24)


def test_huge_float32_activations_read_the_float64_vni():
    """|y| ~ 1e19: the float32 squares (1e38 x rows) used to overflow to a NaN VNI where float64 reads 0.0335."""
    from depthscope.metrics.vni import vni_moments, vni_moments_error

    g = torch.Generator().manual_seed(3)
    y = (torch.randn(256, 64, generator=g) @ torch.randn(64, 64, generator=g) * 1e19).float()
    r, mean, var = vni_moments(y).tolist()
    ref = float(vni(y))
    assert math.isfinite(ref)
    compare(r, ref, rtol=0, atol=vni_moments_error(256))
    compare(var, float(y.double().var(0, unbiased=False).mean()), rtol=(16 + 6) * 2.0**-24)
    compare(mean, float(y.double().mean()), rtol=0, atol=1e-7 * float(y.double().abs().max()))
    tiny = (y.double() * 1e-50).float()  # 1e-31: squares under float32's smallest normal
    compare(vni_moments(tiny)[0], float(vni(tiny)), rtol=0, atol=vni_moments_error(256))


def test_accumulator_rescales_across_batches_of_very_different_size(gen):
    x = torch.randn(90, 6, generator=gen, dtype=torch.float64) @ torch.randn(6, 6, generator=gen, dtype=torch.float64)
    x[30:60] *= 1e150  # the scale grows at the second batch: the first batch's co-moments shrink with it
    acc = CovarianceAccumulator(6)
    for part in torch.split(x, 30):
        acc.update(part)
    compare(acc.vni(), vni(x), rtol=1e-12)
    compare(acc.covariance() / 1e300, torch.cov((x / 1e150).T), rtol=1e-12)
    zeros_first = CovarianceAccumulator(6)  # nothing but zeros seen, then tiny values: rescaled down
    zeros_first.update(torch.zeros(4, 6, dtype=torch.float64))
    zeros_first.update(x[:30] * 1e-200)
    compare(zeros_first.vni(), vni(torch.cat([torch.zeros(4, 6, dtype=torch.float64), x[:30]])), rtol=1e-12)
