"""S4/S4D: initialisation, kernels against references, rate factor, streaming, training parts."""

from __future__ import annotations

import math

import pytest
import torch

from kws.models import model_from_config
from kws.models import s4_kernels as sk
from kws.models.s4 import KERNELS, NO_STREAMING, S4Classifier, S4Layer

SMALL = {"d_model": 16, "d_state": 16, "n_layers": 2}
# (in_channels, length): one raw-audio clip of a quarter second, one MFCC clip of one second
PIPELINES = {"raw": (1, 4000), "mfcc": (20, 98)}


def small_model(kernel: str, in_channels: int = 1, **overrides) -> S4Classifier:
    torch.manual_seed(0)
    return S4Classifier(in_channels, 12, kernel=kernel, **{**SMALL, **overrides}).eval()


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|."""
    return ((got - want).abs().max() / want.abs().max()).item()


def time_domain_kernel(layer: S4Layer, L: int, rate_factor: float = 1.0) -> torch.Tensor:
    """K[l] = C dA^l dB from the dense real recurrence: independent of the FFT/Cauchy path."""
    dA, dB, C = layer.discrete(rate_factor)
    return sk.krylov(dA, dB, C, L)[0]


# ---------------------------------------------------------------- initialisation


def test_hippo_legs_matrix_entries():
    A, B, P = sk.hippo_legs(4)
    assert A[1, 0] == pytest.approx(-math.sqrt(3))  # -(2n+1)^1/2 (2k+1)^1/2 below the diagonal
    assert A[3, 1] == pytest.approx(-math.sqrt(21))
    assert torch.equal(torch.diag(A), -torch.arange(1.0, 5.0, dtype=torch.float64))
    assert torch.all(torch.triu(A, 1) == 0)
    assert torch.allclose(B, torch.sqrt(torch.tensor([1.0, 3, 5, 7], dtype=torch.float64)))
    assert torch.allclose(P**2, torch.tensor([0.5, 1.5, 2.5, 3.5], dtype=torch.float64))


def test_nplr_form_is_hippo_legs_in_a_unitary_basis():
    """blocks(Lambda) - 2 w w^T on (re x, im x) coordinates is HiPPO-LegS, similar by T."""
    N = 16
    lam, P, B, V = sk.nplr_legs(N)
    A, B_legs, _ = sk.hippo_legs(N)
    assert torch.allclose(lam.real, torch.full((N // 2,), -0.5, dtype=torch.float64))
    assert torch.all(lam.imag > 0)
    w = sk.interleave(sk.as_pairs(P))
    A_real = sk.complex_blocks(lam.real, lam.imag) - 2 * torch.outer(w, w)
    T = torch.stack([V.conj().T.real, V.conj().T.imag], dim=1).reshape(N, N)  # s -> (re x, im x)
    assert torch.allclose(T @ A @ torch.linalg.inv(T), A_real, atol=1e-10)
    assert torch.allclose(T @ B_legs, sk.interleave(sk.as_pairs(B)), atol=1e-10)
    # Similar matrices share eigenvalues, but HiPPO-LegS is far from normal (its
    # eigenvector matrix has condition number ~1e11 at N=16), so a dense eigensolver
    # recovers them only to ~1e-4, and how closely depends on the LAPACK build and CPU.
    eig = torch.linalg.eigvals(A_real)
    exact = torch.arange(1, N + 1, dtype=torch.float64)  # A is triangular, diagonal -(n+1)
    torch.testing.assert_close(eig.abs().sort().values, exact, rtol=1e-3, atol=0)


def test_diagonal_initialisations():
    N = 8
    n = torch.arange(4, dtype=torch.float64)
    lam, B = sk.diagonal_init("lin", N)
    assert torch.allclose(lam, -0.5 + 1j * math.pi * n)
    assert torch.all(B == 1)
    lam, _ = sk.diagonal_init("inv", N)
    assert torch.allclose(lam.imag, (N / math.pi) * (N / (2 * n + 1) - 1))
    assert torch.allclose(lam.real, torch.full((4,), -0.5, dtype=torch.float64))
    lam, B = sk.diagonal_init("legs", N)
    lam_nplr, _, B_nplr, _ = sk.nplr_legs(N)
    assert torch.allclose(lam, lam_nplr) and torch.allclose(B, B_nplr)
    with pytest.raises(ValueError, match="d_state must be even"):
        sk.diagonal_init("lin", 7)


# ---------------------------------------------------------------- kernels


@pytest.mark.parametrize("L", [1, 2, 97, 1000])
def test_fast_vandermonde_matches_the_naive_matrix(L):
    torch.manual_seed(0)
    log_z = torch.complex(-torch.rand(3, 8) * 0.05, torch.randn(3, 8)).to(torch.complex128)
    coeff = torch.randn(2, 3, 8, dtype=torch.complex128)
    want = sk.vandermonde_kernel_naive(log_z, coeff, L)
    assert want.shape == (2, 3, L)
    assert rel_err(sk.vandermonde_kernel(log_z, coeff, L), want) < 1e-12
    got32 = sk.vandermonde_kernel(log_z.to(torch.complex64), coeff.to(torch.complex64), L)
    assert rel_err(got32, want) < 1e-5


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("L", [1, 2, 501, 1000])
def test_kernel_matches_the_time_domain_recurrence(kernel, L):
    """FFT/Cauchy (DPLR) or Vandermonde (S4D) kernel == C dA^l dB, in float64 exactly."""
    torch.manual_seed(0)
    layer = S4Layer(8, 16, kernel=kernel).double()
    with torch.no_grad():
        got = layer.kernel(L)[0]
        want = time_domain_kernel(layer, L)
    assert rel_err(got, want) < 1e-9


def test_dplr_fast_cauchy_equals_direct_cauchy_and_is_float32_accurate():
    """The Vandermonde/FFT evaluation of the Cauchy sums vs direct evaluation, one raw second."""
    torch.manual_seed(0)
    N, H, L = 64, 4, 16000
    lam, P, B, _ = sk.nplr_legs(N)
    C = torch.randn(1, H, N // 2, dtype=torch.complex128)
    dt = torch.tensor([1e-3, 1e-2, 3e-2, 1e-1], dtype=torch.float64)
    want = sk.dplr_kernel(lam, P, B, C, dt, L, naive=True)
    assert rel_err(sk.dplr_kernel(lam, P, B, C, dt, L), want) < 1e-10
    single = [t.to(torch.complex64) for t in (lam, P, B, C)]
    assert rel_err(sk.dplr_kernel(*single, dt.float(), L), want) < 2e-5


@pytest.mark.parametrize("kernel", KERNELS)
def test_rate_factor_two_samples_the_kernel_every_other_step(kernel):
    """K at 2 dt for L/2 steps ~ 2 K at dt, every other tap: first order in dt.

    dB scales with dt, hence the factor 2 (= rate_factor). With zero-order hold the
    exact identity is K_2dt[l] = K_dt[2l] + K_dt[2l+1], since dA_2dt = dA_dt^2 and
    dB_2dt = (1 + dA_dt) dB_dt; bilinear (DPLR) satisfies it to second order.
    Observed, H = N = 16, L = 2000, float64 (2 K[2l] / pair sum):
    dt = 1e-3: dplr 7.6e-2 / 3.8e-3, lin 7.2e-3, inv 1.2e-2, legs 2.8e-2 / ~1e-15;
    dt = 1e-4: dplr 6.5e-3 / 3.0e-5, lin 8.3e-4, inv 1.3e-3, legs 2.8e-3 / ~1e-15.
    """
    errors = {}
    for dt in (1e-3, 1e-4):
        torch.manual_seed(0)
        layer = S4Layer(16, 16, kernel=kernel, dt_min=dt, dt_max=dt).double()
        with torch.no_grad():
            full = layer.kernel(2000, 1.0)[0]
            half = layer.kernel(1000, 2.0)[0]
        errors[dt] = rel_err(2 * full[:, ::2], half), rel_err(full[:, ::2] + full[:, 1::2], half)
    assert errors[1e-4][0] < 1e-2
    assert errors[1e-4][0] < errors[1e-3][0] / 5  # the error shrinks with dt
    if kernel == "dplr":
        assert errors[1e-4][1] < 1e-4
    else:
        assert errors[1e-3][1] < 1e-12 and errors[1e-4][1] < 1e-12


def test_fft_conv_is_causal_and_bidirectional_looks_ahead():
    torch.manual_seed(0)
    u = torch.randn(1, 2, 50, dtype=torch.float64)
    k = torch.randn(2, 2, 50, dtype=torch.float64)
    direct_causal = torch.stack(
        [sum(k[0, :, t - s] * u[0, :, s] for s in range(t + 1)) for t in range(50)], -1
    )
    direct_ahead = torch.stack(
        [
            sum((k[1, :, s - t - 1] * u[0, :, s] for s in range(t + 1, 50)), torch.zeros(2))
            for t in range(50)
        ],
        -1,
    ).double()
    assert torch.allclose(sk.fft_conv(u, k[:1])[0], direct_causal, atol=1e-10)
    assert torch.allclose(sk.fft_conv(u, k)[0], direct_causal + direct_ahead, atol=1e-10)


def test_fft_length_is_small_and_smooth():
    for n in [1, 2, 7, 97, 8001, 32000, 88200, 2 * 16001]:
        m = sk.fft_length(n)
        assert m >= n and m < 1.25 * n + 2
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        assert m == 1


# ---------------------------------------------------------------- streaming form


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("pipeline", ["raw", "mfcc"])
def test_step_matches_convolution(kernel, pipeline):
    """Chunked steps (K = 1, a K that does not divide L, a large K) == the FFT form."""
    channels, L = PIPELINES[pipeline]
    model = small_model(kernel, channels)
    x = torch.randn(2, L, channels)
    chunks = [1, 7, 250] if pipeline == "raw" else [1, 7, 98]
    for rate in (1.0, 2.0):
        with torch.no_grad():
            want = model.features(x, rate)
            logits = model(x, rate)
            for K in chunks if rate == 1.0 else chunks[1:]:
                got = model.stream(x, K, rate)
                assert rel_err(got, want) < 1e-4, (K, rate)
                assert rel_err(model.classify(got.mean(1)), logits) < 1e-4, (K, rate)


@pytest.mark.parametrize("kernel", ["dplr", "diag-inv"])
def test_layer_step_matches_layer_convolution(kernel):
    """The bare SSM, no LayerNorm to hide errors, with a state carried in from earlier input."""
    torch.manual_seed(0)
    layer = S4Layer(8, 16, kernel=kernel).eval()
    u = torch.randn(3, 600, 8)
    with torch.no_grad():
        want = layer(u, 1.5)
        state = layer.initial_state(3)
        outs = []
        for start in range(0, 600, 64):  # the last chunk is shorter
            y, state = layer.step(u[:, start : start + 64], state, 1.5)
            outs.append(y)
    assert state.shape == (3, 8, 8, 2) and state.dtype == torch.float32
    assert rel_err(torch.cat(outs, 1), want) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["dplr", "diag-lin"])
def test_step_matches_convolution_on_a_full_second_of_raw_audio(kernel):
    model = small_model(kernel, d_state=64)
    x = torch.randn(1, 16000, 1)
    with torch.no_grad():
        want = model.features(x)
        for K in (1, 160, 16000):
            assert rel_err(model.stream(x, K), want) < 1e-4, K
        want = model.features(x[:, ::2], 2.0)  # the same model on 8 kHz input
        assert rel_err(model.stream(x[:, ::2], 80, 2.0), want) < 1e-4


def test_step_matrix_is_real_cached_and_invalidated():
    model = small_model("dplr")
    layer = model.blocks[0].ssm
    with torch.no_grad():
        m = layer.step_matrix(10, 2.0)
        assert layer.step_matrix(10, 2.0) is m
        assert layer.step_matrix(10, 1.0) is not m
        assert m.dtype == torch.float32 and m.shape == (16, 16 + 10, 10 + 16)
        layer.log_dt.add_(0.1)  # what an optimiser step does
        fresh = layer.step_matrix(10, 2.0)
    assert fresh is not m and not torch.allclose(fresh, m)
    model.train()
    with torch.no_grad():
        assert layer.step_matrix(10, 2.0) is not layer.step_matrix(10, 2.0)


def test_silence_does_not_leave_subnormal_state():
    """A state fed zeros decays; it must reach exact zero, not subnormal floats (slow on CPU)."""
    model = small_model("diag-lin", dt_min=0.1, dt_max=0.1)
    with torch.no_grad():
        _, state = model.step(torch.randn(1, 50, 1), model.initial_state(1))
        for _ in range(6):
            _, state = model.step(torch.zeros(1, 1000, 1), state)
    for s in state:
        assert not torch.any((s != 0) & (s.abs() < torch.finfo(torch.float32).tiny))


def test_bidirectional_is_offline_only():
    model = small_model("diag-lin", bidirectional=True)
    x = torch.randn(1, 300, 1)
    with torch.no_grad():
        base = model.features(x)
        later = x.clone()
        later[:, 200:] += 1.0
        assert rel_err(model.features(later)[:, :200], base[:, :200]) > 1e-2
    with pytest.raises(RuntimeError, match="retrain with bidirectional: false"):
        model.initial_state(1)
    with pytest.raises(RuntimeError, match=NO_STREAMING):
        model.step(x[:, :10], [])


@pytest.mark.parametrize("kernel", ["dplr", "diag-inv"])
def test_causal_model_ignores_the_future(kernel):
    model = small_model(kernel)
    x = torch.randn(1, 300, 1)
    later = x.clone()
    later[:, 200:] = torch.randn(1, 100, 1)
    with torch.no_grad():
        assert rel_err(model.features(later)[:, :200], model.features(x)[:, :200]) < 1e-5


# ---------------------------------------------------------------- training parts


def test_param_groups_give_ssm_parameters_their_own_lr_and_no_decay():
    model = small_model("dplr", ssm_lr=1e-3)
    groups = model.param_groups(lr=1e-2, weight_decay=0.05)
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())  # each exactly once
    ssm = next(g for g in groups if g["lr"] == 1e-3)
    assert ssm["weight_decay"] == 0.0
    layer = model.blocks[0].ssm
    ssm_ids = {id(p) for p in ssm["params"]}
    for p in (layer.log_dt, layer.log_neg_A_real, layer.A_imag, layer.B, layer.P):
        assert id(p) in ssm_ids
    assert id(layer.C) not in ssm_ids and id(layer.D) not in ssm_ids
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(layer.C) in decayed and id(model.blocks[0].out.weight) in decayed
    assert id(layer.D) not in decayed
    assert next(g for g in model.param_groups(1e-4, 0.05) if id(layer.P) in map(id, g["params"]))[
        "lr"
    ] == pytest.approx(1e-4)  # never above the main lr


@pytest.mark.parametrize("kernel", KERNELS)
def test_gradients_reach_every_parameter(kernel):
    model = small_model(kernel).train()
    logits = model(torch.randn(2, 500, 1))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 3])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


@pytest.mark.parametrize("kernel", ["dplr", "diag-lin"])
def test_layer_gradients_match_finite_differences(kernel):
    """Autograd through the kernel, the hand-written FFT-conv backward and the rate factor."""
    torch.manual_seed(0)
    layer = S4Layer(2, 4, kernel=kernel, bidirectional=kernel == "diag-lin").double()
    names = [name for name, _ in layer.named_parameters()]
    values = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    u = torch.randn(2, 12, 2, dtype=torch.float64, requires_grad=True)

    def run(u, *values):
        return torch.func.functional_call(layer, dict(zip(names, values, strict=True)), (u, 1.7))

    assert torch.autograd.gradcheck(run, (u, *values))


@pytest.mark.parametrize("kernel", KERNELS)
def test_config_rebuilds_the_same_model(kernel):
    model = small_model(kernel, bidirectional=kernel == "diag-legs", dropout=0.2, dt_max=0.05)
    assert model.family == ("s4" if kernel == "dplr" else "s4d")
    assert model.config["family"] == model.family and model.config["kernel"] == kernel
    clone = model_from_config(dict(model.config))
    clone.load_state_dict(model.state_dict())
    x = torch.randn(2, 120, 1)
    with torch.no_grad():
        assert torch.equal(clone.eval()(x), model(x))


def test_default_model_is_the_papers_size():
    model = S4Classifier(1, 35)
    H, n, layers = 128, 32, 6
    per_layer = 2 * H + (2 * H * H + 2 * H) + H + 2 * n + 2 * n + 2 * n + 2 * H * n + H
    expected = layers * per_layer + (H + H) + 2 * H + (35 * H + 35)
    assert model.n_parameters == expected == 256_547
    assert f"{expected:,} parameters" in model.summary()
    assert S4Classifier(1, 35, kernel="diag-lin").n_parameters == expected - layers * 2 * n


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown S4 kernel 'diag'"):
        S4Classifier(1, 12, kernel="diag")
    with pytest.raises(ValueError, match="d_state must be even"):
        S4Classifier(1, 12, d_state=15)
    with pytest.raises(ValueError, match="dt_min <= dt_max"):
        S4Classifier(1, 12, dt_min=0.1, dt_max=0.01)
    model = small_model("diag-lin")
    with pytest.raises(ValueError, match=r"expects input \(B, L, 1\), got shape \(2, 100, 20\)"):
        model(torch.randn(2, 100, 20))
    with pytest.raises(ValueError, match="rate_factor must be a positive number"):
        model(torch.randn(2, 100, 1), rate_factor=0.0)
    with pytest.raises(ValueError, match="state has 1 tensors"):
        model.step(torch.randn(1, 5, 1), model.initial_state(1)[:1])


def test_runs_under_bf16_autocast():
    model = small_model("dplr")
    x = torch.randn(2, 300, 1)
    with torch.no_grad():
        want = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x)
    assert torch.isfinite(got).all() and rel_err(got.float(), want) < 0.1


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["dplr", "diag-inv"])
def test_step_exports_to_onnx(kernel, tmp_path):
    """The step is real-only ONNX: onnxruntime gives the same outputs and states as torch."""
    ort = pytest.importorskip("onnxruntime")
    model = small_model(kernel, n_layers=1, d_model=8, d_state=8)

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x, state):
            y, (new,) = self.model.step(x, [state], 2.0)
            return y, new

    x, state = torch.randn(1, 40, 1), torch.randn(1, 8, 4, 2)
    path = tmp_path / "step.onnx"
    torch.onnx.export(Step().eval(), (x, state), dynamo=True).save(str(path))
    session = ort.InferenceSession(str(path))
    names = [i.name for i in session.get_inputs()]
    got = session.run(None, dict(zip(names, [x.numpy(), state.numpy()], strict=True)))
    with torch.no_grad():
        want = Step()(x, state)
    for g, w in zip(got, want, strict=True):
        assert rel_err(torch.from_numpy(g), w) < 1e-5


@pytest.mark.parametrize("kernel", ["dplr", "diag-lin"])
def test_bandlimit_cuts_the_modes_past_it_at_the_step_in_use(kernel):
    """Modes turning bandlimit / 2 or more per step leave the output: in the kernel and in the
    streaming step alike, judged with the rescaled dt, and nothing else changes."""
    torch.manual_seed(0)
    layer = S4Layer(6, 32, kernel=kernel, dt_min=0.01, dt_max=0.5).eval()
    limited = S4Layer(6, 32, kernel=kernel, dt_min=0.01, dt_max=0.5, bandlimit=1.0).eval()
    limited.load_state_dict(layer.state_dict())
    turns = layer.A_imag.abs() * torch.exp(layer.log_dt).unsqueeze(-1) / (2 * math.pi)
    for factor in (1.0, 2.0):
        cut = turns * factor >= 0.5  # (H, N/2): above Nyquist at this step
        assert 0 < cut.sum() < cut.numel()
        by_hand = S4Layer(6, 32, kernel=kernel, dt_min=0.01, dt_max=0.5).eval()
        by_hand.load_state_dict(layer.state_dict())
        with torch.no_grad():
            by_hand.C[:, cut] = 0
            want = by_hand.kernel(300, factor)
            assert torch.equal(limited.kernel(300, factor), want)
            assert not torch.allclose(layer.kernel(300, factor), want)
            # the recurrence that streaming and export run cuts the same modes
            assert rel_err(time_domain_kernel(limited, 300, factor), want) < 1e-4
    assert (turns * 2 >= 0.5).sum() > (turns >= 0.5).sum()  # a lower rate cuts more


def test_bandlimit_travels_in_the_config_and_is_checked():
    model = small_model("dplr", bandlimit=1.0)
    assert model.config["bandlimit"] == 1.0 and "bandlimit" not in small_model("dplr").config
    clone = model_from_config(dict(model.config))
    assert all(layer.ssm.bandlimit == 1.0 for layer in clone.blocks)
    for bad in (0.0, -1.0, True):
        with pytest.raises(ValueError, match="bandlimit must be a positive fraction"):
            S4Classifier(1, 12, bandlimit=bad)
