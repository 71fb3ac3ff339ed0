"""The mathematics of S4 and S4D: initialisations, convolution kernels, the recurrent step.

Every layer holds H channels, each a continuous-time linear system
x' = A x + B u, y = C x + D u, with step size dt per channel. The system is
conjugate-symmetric: its N-dimensional complex state is (x, conj x) with x of
N/2 modes, so the output is 2 Re(C x) and only N/2 modes are stored.

* S4 (DPLR): A = Lambda - P P^H on the full N-dim system, initialised from
  HiPPO-LegS (Gu, Goel & Re, ICLR 2022), bilinear discretisation.
* S4D: A = Lambda diagonal (Lin, Inv or the normal part of LegS; Gu et al. 2022),
  zero-order-hold discretisation.

Two ways to run the same system, which the tests hold equal:

* the convolution kernel K (H, L), built with complex tensors for training;
* the recurrent step, in real arithmetic only. x is seen as the real N-vector
  (re_0, im_0, re_1, im_1, ...), A as a dense real N x N matrix (2 x 2 blocks for
  Lambda plus the rank-1 term -2 w w^T with w = (re P_0, im P_0, ...)). Dense
  because HiPPO-LegS's eigenvectors are exponentially ill-conditioned: a
  diagonalised DPLR recurrence does not match its convolution. Real because the
  step exports to ONNX, which has no complex numbers; its matrix is built from
  the parameters with matmul, gather and elementwise ops only, so an exporter
  can put it in the graph and a runtime can fold it.

Complex parameters are stored as (..., 2) real tensors (re, im).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# --------------------------------------------------------------------------- initialisation


def hippo_legs(N: int) -> tuple[Tensor, Tensor, Tensor]:
    """HiPPO-LegS (A, B) and the rank-1 P that makes A + P P^T normal, in float64."""
    n = torch.arange(N, dtype=torch.float64)
    root = torch.sqrt(2 * n + 1)
    A = -torch.tril(root[:, None] * root[None, :], diagonal=-1) - torch.diag(n + 1)
    return A, root.clone(), torch.sqrt(n + 0.5)


def nplr_legs(N: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """HiPPO-LegS as Lambda - P P^H in its normal part's eigenbasis, half of the modes kept.

    A + P P^T = -I/2 + S with S skew-symmetric, so it is diagonalised by a unitary V
    (stably, unlike A itself). Returns Lambda, P, B (each (N/2,) complex128) and the
    kept eigenvectors V (N, N/2): the full basis is (V, conj V).
    """
    if N % 2:
        raise ValueError(f"d_state must be even (conjugate pairs of modes), got {N}")
    A, B, P = hippo_legs(N)
    S = A + P[:, None] * P[None, :] + 0.5 * torch.eye(N, dtype=torch.float64)
    mu, V = torch.linalg.eigh(1j * S)  # i S is Hermitian; S's eigenvalues are -i mu
    keep = torch.nonzero(mu < 0).flatten().flip(0)  # positive imaginary parts, slowest first
    if keep.numel() != N // 2:
        raise RuntimeError(f"HiPPO-LegS(N={N}) has {keep.numel()} modes with Im > 0, not {N // 2}")
    V = V[:, keep]
    lam = -0.5 - 1j * mu[keep]
    Vh = V.conj().T
    return lam, Vh @ P.to(V.dtype), Vh @ B.to(V.dtype), V


def diagonal_init(kind: str, N: int) -> tuple[Tensor, Tensor]:
    """S4D's diagonal A (N/2,) and B (N/2,) as complex128 for kind lin, inv or legs."""
    if N % 2:
        raise ValueError(f"d_state must be even (conjugate pairs of modes), got {N}")
    n = torch.arange(N // 2, dtype=torch.float64)
    ones = torch.ones(N // 2, dtype=torch.complex128)
    if kind == "lin":
        return -0.5 + 1j * math.pi * n, ones
    if kind == "inv":
        return -0.5 + 1j * (N / math.pi) * (N / (2 * n + 1) - 1), ones
    if kind == "legs":
        lam, _, B, _ = nplr_legs(N)
        return lam, B
    raise ValueError(f"unknown diagonal initialisation {kind!r}; choose lin, inv or legs")


# --------------------------------------------------------------------------- conv kernels


def vandermonde_kernel(log_z: Tensor, coeff: Tensor, L: int) -> Tensor:
    """K[l] = 2 Re sum_n coeff_n z_n^l for l < L, as a real batched matmul.

    log_z (..., n) and coeff (..., n) complex broadcast to (..., n); returns (..., L).
    With l = a M + b, z^l = z^(aM) z^b: the (.., L/M, n) and (.., n, M) factors cost
    O(sqrt(L) n) exponentials instead of O(L n), and the sum over n is one matmul.
    Only the real part is needed, so Re(X Y) = [Re X, -Im X] @ [Re Y; Im Y].

    The exponentials are taken in double precision: a phase l Im(log z) reaches 10^4
    radians on one-second raw clips, and its float32 rounding alone would cost 1e-3
    of relative error (modes near the unit circle barely decay). The factors are
    small, so this is cheap; the matmul runs in the input's precision.
    """
    M = math.isqrt(max(L - 1, 0)) + 1
    rows = -(-L // M)
    wide = torch.promote_types(log_z.dtype, torch.complex128)
    log_z = log_z.to(wide)
    b = torch.arange(M, device=log_z.device, dtype=torch.float64)
    a = torch.arange(rows, device=log_z.device, dtype=torch.float64) * M
    inner = _exp_flushed(log_z.unsqueeze(-1) * b).to(coeff.dtype)  # (..., n, M)
    outer = _exp_flushed(log_z.unsqueeze(-2) * a.unsqueeze(-1)).to(coeff.dtype)  # (.., rows, n)
    outer = coeff.unsqueeze(-2) * outer
    left = torch.cat([outer.real, -outer.imag], dim=-1)  # (..., rows, 2n)
    right = torch.cat([inner.real, inner.imag], dim=-2)  # (..., 2n, M)
    return 2 * (left @ right).flatten(-2)[..., :L]


def _exp_flushed(x: Tensor) -> Tensor:
    """exp(x), exactly zero where it is below 1e-15: products of such tiny factors would
    be subnormal floats, which CPUs process tens of times slower."""
    return torch.exp(x) * (x.real > -35)


def vandermonde_kernel_naive(log_z: Tensor, coeff: Tensor, L: int) -> Tensor:
    """The reference: materialise the (..., n, L) Vandermonde matrix, in coeff's precision."""
    log_z = log_z.to(coeff.dtype)
    ell = torch.arange(L, device=log_z.device, dtype=log_z.real.dtype)
    return 2 * torch.einsum("...n,...nl->...l", coeff, torch.exp(log_z.unsqueeze(-1) * ell)).real


def s4d_kernel(
    lam: Tensor, B: Tensor, C: Tensor, dt: Tensor, L: int, naive: bool = False
) -> Tensor:
    """Diagonal SSM kernel with ZOH: dA = exp(dt A), dB = (dA - 1)/A B; returns (d, H, L).

    lam, B: (n,) or (H, n) complex; C: (d, H, n) complex; dt: (H,) real.
    """
    dtA = dt.double().unsqueeze(-1) * lam.to(torch.complex128)  # phases: see vandermonde_kernel
    coeff = C * B * (torch.expm1(dtA) / lam).to(C.dtype)
    return (vandermonde_kernel_naive if naive else vandermonde_kernel)(dtA, coeff, L)


def dplr_kernel(
    lam: Tensor, P: Tensor, B: Tensor, C: Tensor, dt: Tensor, L: int, naive: bool = False
) -> Tensor:
    """S4 kernel of A = Lambda - P P^H with bilinear discretisation; returns (d, H, L).

    The generating function sum_l K[l] z^l at the L-th roots of unity z is
    C~ (a I - b A)^-1 B with a = (1 - z)/dt, b = (1 + z)/2 and C~ = C (I - dA^L):
    dA^L - I comes from the dense real dA by repeated squaring, for the current dt and L,
    so C is learned and C~ follows any rate factor. Woodbury reduces the inverse to
    four Cauchy sums k_xy(z) = sum_n x_n y_n / (a - b lambda_n) over all N modes
    (the conjugate half included), combined as k00 - b k01 k10 / (1 + b k11);
    an inverse real FFT gives K.

    The Cauchy sums are evaluated without forming (H, N, L/2+1) tensors: at roots of
    unity 1/(a - b lambda) = c * DFT_l[dlambda^l] with dlambda the bilinear diagonal
    step and c = dt / ((1 - dt lambda/2)(1 - dlambda^L)), so each sum is the real FFT
    of a Vandermonde sum, which ``vandermonde_kernel`` does with a matmul.
    ``naive=True`` evaluates the Cauchy sums directly instead (the reference).

    lam, P, B: (n,) or (H, n) complex; C: (d, H, n) complex; dt: (H,) real.
    """
    increment, _ = bilinear_dplr(as_pairs(lam), as_pairs(P), as_pairs(B), dt)
    C_real = output_row(as_pairs(C))
    C_tilde = -row_increment_power(C_real, increment, L)
    C_t = torch.complex(C_tilde[..., 0::2], -C_tilde[..., 1::2]) / 2  # back to y = 2 Re(C x)

    d = C.shape[0]
    dtl = dt.double().unsqueeze(-1) * lam.to(torch.complex128)  # (H, n); phases: see vandermonde
    weights = torch.cat(  # (2d + 2, H, n): the x_n y_n of k00, k01, k10, k11
        [
            C_t * B,
            C_t * P,
            (P.conj() * B).expand_as(dtl).unsqueeze(0),
            (P.conj() * P).expand_as(dtl).unsqueeze(0),
        ]
    )
    k = torch.arange(L // 2 + 1, device=dt.device, dtype=dt.dtype)
    z = torch.polar(torch.ones_like(k), -2 * math.pi * k / L)  # (F,)
    if naive:
        a = (1 - z) / dt.unsqueeze(-1)  # (H, F)
        b = (1 + z) / 2
        r = 1 / (a.unsqueeze(-2) - b * lam.unsqueeze(-1))  # (H, n, F)
        r_conj = 1 / (a.unsqueeze(-2) - b * lam.conj().unsqueeze(-1))
        sums = torch.einsum("khn,hnf->khf", weights, r) + torch.einsum(
            "khn,hnf->khf", weights.conj(), r_conj
        )
    else:
        log_dlam = torch.log1p(dtl / 2) - torch.log1p(-dtl / 2)
        scale = dt.double().unsqueeze(-1) / ((1 - dtl / 2) * -torch.expm1(L * log_dlam))
        sums = torch.fft.rfft(vandermonde_kernel(log_dlam, weights * scale.to(C.dtype), L), n=L)
    b = (1 + z) / 2
    k00, k01, k10, k11 = sums.split([d, d, 1, 1])  # split: its backward is one cat
    spectrum = k00 - b * k01 * k10 / (1 + b * k11)
    return torch.fft.irfft(spectrum, n=L)


def fft_length(n: int) -> int:
    """An FFT size >= n that pocketfft does fast: a power of two if that costs at most
    10% more points than the smallest 2^a 3^b 5^c, else that. (On this CPU a real FFT
    of 32,768 points is ~15% faster than one of 32,000; large primes are slow.)"""
    power_of_two = 1 << max(0, (n - 1).bit_length())
    best = power_of_two
    p3 = 1
    while p3 < best:
        p35 = p3
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 5
        p3 *= 3
    return power_of_two if power_of_two <= 1.1 * best else best


def fft_conv(u: Tensor, k: Tensor, D: Tensor | None = None) -> Tensor:
    """Convolve u (B, H, L) with kernels k (d, H, L), plus D u if D (H,) is given.

    d = 1 is causal. d = 2 is bidirectional: k[0] looks back (including now), k[1]
    looks ahead (k[1][j] weighs the input j + 1 steps in the future).
    Zero-padding to n >= 2L makes the FFT's circular convolution linear; D joins
    the first tap, which saves two passes over (B, H, L).
    """
    L = u.shape[-1]
    n = fft_length(2 * L)
    circular = F.pad(k[0], (0, n - L))
    if D is not None:
        circular = circular + F.pad(D.unsqueeze(-1), (0, n - 1))
    if k.shape[0] == 2:
        circular = circular + F.pad(k[1].flip(-1), (n - L, 0))
    return _CircularConv.apply(u, circular)


class _CircularConv(torch.autograd.Function):
    """(u circularly convolved with k)[:L] for u (B, H, L), k (H, n), by real FFTs.

    The backward is written out because autograd's backward of rfft runs complex
    FFTs of the full length plus padding copies. The adjoint of a circular
    convolution is a circular correlation, rfft(g) * conj(rfft(k)), which needs
    only real FFTs: four of (B, H, n) per forward + backward instead of six.
    """

    @staticmethod
    def forward(ctx, u: Tensor, k: Tensor) -> Tensor:
        n, L = k.shape[-1], u.shape[-1]
        u_f, k_f = torch.fft.rfft(u, n=n), torch.fft.rfft(k)
        ctx.save_for_backward(u_f, k_f)
        ctx.lengths = n, L
        return torch.fft.irfft(u_f * k_f, n=n)[..., :L]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        u_f, k_f = ctx.saved_tensors
        n, L = ctx.lengths
        grad_f = torch.fft.rfft(grad, n=n)
        grad_u = grad_k = None
        if ctx.needs_input_grad[0]:
            grad_u = torch.fft.irfft(grad_f * k_f.conj(), n=n)[..., :L]
        if ctx.needs_input_grad[1]:
            grad_k = torch.fft.irfft(torch.einsum("bhf,bhf->hf", grad_f, u_f.conj()), n=n)
        return grad_u, grad_k


# --------------------------------------------------------------------------- real arithmetic


def as_pairs(z: Tensor) -> Tensor:
    """complex (...) -> real (..., 2)."""
    return torch.view_as_real(z.resolve_conj()) if z.is_complex() else z


def interleave(pairs: Tensor) -> Tensor:
    """(..., n, 2) -> (..., 2n) as (re_0, im_0, re_1, im_1, ...)."""
    return pairs.flatten(-2)


def output_row(C: Tensor) -> Tensor:
    """C (..., n, 2) -> the real row c with 2 Re(C x) = c . x for interleaved x."""
    return interleave(torch.stack([2 * C[..., 0], -2 * C[..., 1]], dim=-1))


def complex_blocks(re: Tensor, im: Tensor) -> Tensor:
    """Diagonal complex (..., n) as a real (..., 2n, 2n) matrix of blocks [[re, -im], [im, re]]."""
    n = re.shape[-1]
    eye = torch.eye(n, dtype=re.dtype, device=re.device)
    blocks = torch.stack([torch.stack([re, -im], -1), torch.stack([im, re], -1)], -2)
    dense = blocks.unsqueeze(-2) * eye.unsqueeze(-1).unsqueeze(-3)  # (..., n, 2, n, 2)
    return dense.reshape(*re.shape[:-1], 2 * n, 2 * n)


def _cmul(x: Tensor, y: Tensor) -> Tensor:
    """Product of (..., 2) pairs."""
    return torch.stack(
        [
            x[..., 0] * y[..., 0] - x[..., 1] * y[..., 1],
            x[..., 0] * y[..., 1] + x[..., 1] * y[..., 0],
        ],
        dim=-1,
    )


def _cinv(x: Tensor) -> Tensor:
    """1 / x for (..., 2) pairs."""
    norm = x[..., 0] ** 2 + x[..., 1] ** 2
    return torch.stack([x[..., 0] / norm, -x[..., 1] / norm], dim=-1)


def zoh_diagonal(lam: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """Diagonal A with zero-order hold, in real arithmetic: (dA - I) (H, N, N) and dB (H, N).

    lam, B: (n, 2) or (H, n, 2) pairs; dt: (H,). dA = exp(dt A) and dB = (dA - 1)/A B.
    exp(z) - 1 is formed as 2 exp(z/2) sinh(z/2): exp(z) - 1 would cancel to a
    relative error of 1e-4 for the slowest modes at dt = 1e-3 in float32.
    """
    x = dt.unsqueeze(-1) * lam[..., 0] / 2
    y = dt.unsqueeze(-1) * lam[..., 1] / 2
    half = torch.exp(x).unsqueeze(-1) * torch.stack([torch.cos(y), torch.sin(y)], dim=-1)
    sinh = torch.stack([torch.sinh(x) * torch.cos(y), torch.cosh(x) * torch.sin(y)], dim=-1)
    increment = 2 * _cmul(half, sinh)  # exp(dt A) - 1, (H, n, 2)
    dB = _cmul(_cmul(increment, _cinv(lam)), B)
    return complex_blocks(increment[..., 0], increment[..., 1]), interleave(dB)


def bilinear_dplr(lam: Tensor, P: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """A = Lambda - P P^H (full conjugate system), bilinear, real: (dA - I) (H, N, N), dB (H, N).

    On interleaved real coordinates A = blocks(Lambda) - 2 w w^T with w = interleave(P).
    dA = (I - dt/2 A)^-1 (I + dt/2 A), so dA - I = (I - dt/2 A)^-1 dt A, and
    dB = (I - dt/2 A)^-1 dt B. The inverse is Sherman-Morrison on a block-diagonal
    matrix: no solver, so it exports to ONNX. The increment dA - I is returned
    because dA^L - I, which the kernel needs, cancels badly when dt L is small.
    """
    half = (dt / 2).unsqueeze(-1)  # (H, 1)
    E = torch.stack([1 - half * lam[..., 0], -half * lam[..., 1]], dim=-1)  # I - dt/2 Lambda
    E_inv = _cinv(E)
    E_inv = complex_blocks(E_inv[..., 0], E_inv[..., 1])  # (H, N, N)
    w = interleave(P).expand(E_inv.shape[:-1])  # (H, N)
    dt_ = dt.reshape(-1, 1, 1)
    col = E_inv @ w.unsqueeze(-1)  # (H, N, 1)
    row = w.unsqueeze(-2) @ E_inv  # (H, 1, N)
    denom = 1 + dt_ * (w.unsqueeze(-2) @ col)  # (H, 1, 1)
    M_inv = E_inv - dt_ * (col @ row) / denom  # (I - dt/2 A)^-1
    A = complex_blocks(lam[..., 0], lam[..., 1]) - 2 * w.unsqueeze(-1) * w.unsqueeze(-2)
    dB = (M_inv @ (dt_ * interleave(B).expand(w.shape).unsqueeze(-1))).squeeze(-1)
    return dt_ * (M_inv @ A), dB


#: below this, entries of powers and states are set to zero (see ``flush``)
TINY = 1e-18


def flush(x: Tensor) -> Tensor:
    """x with entries below TINY in magnitude set to zero.

    Powers of dA and states fed silence decay towards zero; once their products
    become subnormal floats, matmuls and steps slow down many times over on CPU.
    TINY is far below float32 resolution relative to the O(1) entries that matter.
    """
    return F.hardshrink(x, TINY)


def add_identity(X: Tensor) -> Tensor:
    """I + X for (..., N, N)."""
    return X + torch.eye(X.shape[-1], dtype=X.dtype, device=X.device)


def matrix_power(M: Tensor, n: int) -> Tensor:
    """M^n for (..., N, N) by repeated squaring: about 2 log2(n) matmuls."""
    result = None
    square = M
    while n:
        if n & 1:
            result = square if result is None else flush(result @ square)
        n >>= 1
        if n:
            square = flush(square @ square)
    if result is None:
        return add_identity(torch.zeros_like(M))
    return result


def row_increment_power(c: Tensor, X: Tensor, n: int) -> Tensor:
    """c ((I + X)^n - I) for rows c (..., N) and X (..., N, N).

    Repeated squaring of increments, S -> 2 S + S^2 for (I + S)^2 - I, with the
    row carried along as its own increment d = c (I + X)^m - c, which stays exact
    when X is small. Only the squarings are matrix products.
    """
    d = torch.zeros_like(c)
    square = X
    while n:
        if n & 1:
            d = d + ((c + d).unsqueeze(-2) @ square).squeeze(-2)
        n >>= 1
        if n:
            square = flush(torch.baddbmm(square, square, square, beta=2))  # 2 S + S S
    return d


def krylov(dA: Tensor, dB: Tensor, C: Tensor, K: int) -> tuple[Tensor, Tensor, Tensor]:
    """Kernel taps C dA^t dB (H, K), rows C dA^(t+1) (H, K, N), columns dA^t dB (H, N, K).

    dA (H, N, N), dB (H, N), C (H, N) the real output row. By doubling, O(log K)
    matmuls: rows and columns double in number each round, [X, dA^m X].
    """
    cols = dB.unsqueeze(-1)  # (H, N, m): dA^j dB for j < m
    rows = C.unsqueeze(-2) @ dA  # (H, m, N): C dA^(t+1) for t < m
    power = dA  # dA^m
    while cols.shape[-1] < K:
        cols = torch.cat([cols, flush(power @ cols)], dim=-1)
        rows = torch.cat([rows, flush(rows @ power)], dim=-2)
        power = flush(power @ power)
    cols, rows = cols[..., :K], rows[..., :K, :]
    return (C.unsqueeze(-2) @ cols).squeeze(-2), rows, cols


def step_matrix(dA: Tensor, dB: Tensor, C: Tensor, D: Tensor, K: int) -> Tensor:
    """The whole chunk recurrence as one real matrix per channel, (H, N + K, K + N).

    With x the state before a chunk of K inputs u:
        y_t = C dA^(t+1) x + sum_{s<=t} K[t-s] u_s + D u_t,
        x'  = dA^K x + sum_s dA^(K-1-s) dB u_s,
    so [y; x'] = [[rows, Toeplitz(K) + D I], [dA^K, columns reversed]] @ [x; u].
    Returned transposed, for row vectors: [y, x'] = [x, u] @ S, which is the
    fastest batched matmul for small batches on CPU (a batched matrix-vector
    product with column vectors is up to 7x slower).
    Built from the parameters with matmuls, gathers and elementwise ops only.
    """
    taps, rows, cols = krylov(dA, dB, C, K)
    lag = torch.arange(K, device=dA.device)
    lag = lag.unsqueeze(1) - lag.unsqueeze(0)  # t - s
    toeplitz = taps[:, lag.clamp(min=0)] * (lag >= 0)
    toeplitz = toeplitz + D.reshape(-1, 1, 1) * torch.eye(K, dtype=dA.dtype, device=dA.device)
    top = torch.cat([rows, toeplitz], dim=-1)
    bottom = torch.cat([matrix_power(dA, K), cols.flip(-1)], dim=-1)
    return torch.cat([top, bottom], dim=-2).mT.contiguous()


def ssm_step(u: Tensor, x: Tensor, matrix: Tensor) -> tuple[Tensor, Tensor]:
    """One chunk: u (B, H, K), state x (B, H, N) and ``step_matrix`` -> y (B, H, K), new x.

    One batched matmul, no complex numbers, no FFT: the form that exports to ONNX.
    """
    K = u.shape[-1]
    if matrix.shape[-1] != K + x.shape[-1]:
        raise ValueError(
            f"chunk has {K} steps but the step matrix is for {matrix.shape[-1] - x.shape[-1]}"
        )
    out = (torch.cat([x, u], dim=-1).transpose(0, 1) @ matrix).transpose(0, 1)
    return out[..., :K], flush(out[..., K:])
