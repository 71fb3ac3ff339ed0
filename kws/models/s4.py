"""S4 and S4D keyword-spotting models: the SSM layer, the residual block, the classifier.

The layer's mathematics (initialisations, kernels, step) is in
:mod:`kws.models.s4_kernels`; this module holds the parameters and the shapes.

Step size for raw 16 kHz audio. dt is learned per channel, initialised log-uniform
in [dt_min, dt_max] = [1e-3, 1e-1], the S4 paper's Speech Commands setting. A mode
of HiPPO-LegS with step dt remembers about 1/dt steps, so on raw audio the
channels start with memories of 10 to 1,000 samples (0.6 to 62 ms), the
timescales of pitch and formants; the stack of six layers and the mean pooling
cover the whole second. On MFCC (100 frames/s) the same range is 0.1 to 10 s.

Sample rate. ``rate_factor`` = trained_rate / input_rate multiplies dt, and the
kernel is built for the input's length, so a model trained at 16 kHz runs at any
rate without retraining (S4's zero-shot resampling result).

Pooling in time (SaShiMi-style). ``pool`` gives each block a factor: after block i
the sequence is mean-pooled over groups of pool[i] steps, so later blocks run at a
lower rate and a raw model trains several times faster. A pool is a span of time,
not of samples: at another rate the first pool whose span is a whole number of
the new samples takes that many (2 instead of 4 at 8 kHz, 8 at 32 kHz), its block
and those before it get dt x rate_factor, and the blocks after it run at their
trained rate with their trained dt (``pool_plan``). Where no pool spans whole
samples (at 11.025 kHz the first 0.25-ms pool spans 2.75625 samples), the first
one that spans more than one sample pools by area (``area_pool``): each output
is the mean of the block's output over its span of time, with each sample held
over its own interval, so the later blocks still run at their trained rate.
For a span of a/b samples the weights repeat every a samples (441, 40 ms, at
11.025 kHz), so a stream moves in multiples of that. Measured on the shipped
``s4_raw_pool`` at 8 kHz: 65.9% by time against 56.8% by samples, and the same
comparison at 11.025, 22.05 and 44.1 kHz, in ``benchmarks/pool_by_time.py``.

A, B and P are shared by the H channels of a layer and each channel has its own
dt and C, as in the S4 reference configuration for Speech Commands (``n_ssm: 1``):
that is what gives the paper's model its size of about 0.3M parameters.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
from fractions import Fraction
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kws.models import s4_kernels as sk
from kws.models.base import KWSModel, State, check_pool, mean_pool

KERNELS = ("dplr", "diag-lin", "diag-inv", "diag-legs")
#: the longest piece of a chunk that the recurrent step does in one matmul
STEP_PIECE = 32
NO_STREAMING = "bidirectional S4 has no streaming form; retrain with bidirectional: false"


class S4Layer(nn.Module):
    """H independent linear SSMs applied channel-wise: (B, L, H) -> (B, L, H).

    Parameters: log_dt (H,); the diagonal part of A as log(-Re) and Im (N/2,) each;
    B and, for DPLR, P (N/2, 2); C (directions, H, N/2, 2); the skip term D (H,).
    """

    #: parameters trained with the SSM learning rate and no weight decay
    SSM_PARAMETERS = ("log_dt", "log_neg_A_real", "A_imag", "B", "P")

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        kernel: str = "dplr",
        bidirectional: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        bandlimit: float | None = None,
    ):
        super().__init__()
        check_arguments(d_model, d_state, kernel, dt_min, dt_max, bandlimit)
        self.d_model, self.d_state, self.kernel_kind = d_model, d_state, kernel
        self.bidirectional, self.bandlimit = bidirectional, bandlimit
        H, n = d_model, d_state // 2
        if kernel == "dplr":
            lam, P, B, _ = sk.nplr_legs(d_state)
            self.P = nn.Parameter(sk.as_pairs(P).float())
        else:
            lam, B = sk.diagonal_init(kernel.removeprefix("diag-"), d_state)
            self.register_parameter("P", None)
        self.log_neg_A_real = nn.Parameter(torch.log(-lam.real).float())
        self.A_imag = nn.Parameter(lam.imag.float())
        self.B = nn.Parameter(sk.as_pairs(B).float())
        # C ~ complex normal with E|C|^2 = 1
        self.C = nn.Parameter(torch.randn(2 if bidirectional else 1, H, n, 2) * math.sqrt(0.5))
        self.D = nn.Parameter(torch.randn(H))
        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)
        self._step_cache: dict[Any, Tensor] = {}

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_state={self.d_state}, kernel={self.kernel_kind!r}, "
            f"bidirectional={self.bidirectional}, bandlimit={self.bandlimit}"
        )

    def _lambda_pairs(self) -> Tensor:
        """The diagonal part of A as (N/2, 2) pairs, real part kept negative."""
        return torch.stack([-torch.exp(self.log_neg_A_real), self.A_imag], dim=-1)

    def _dt(self, rate_factor: float) -> Tensor:
        return torch.exp(self.log_dt) * rate_factor

    def _output(self, rate_factor: float) -> Tensor:
        """C, less the modes above the band limit at this step size, if there is one.

        A mode turns Im(A) dt / 2 pi times per step. Past half a turn (the Nyquist
        frequency) a discrete system cannot tell it from a slower one: S4's bilinear map
        squeezes it next to Nyquist, S4D's zero-order hold folds it, and either way it
        moves whenever dt does. Such an S4 mode, learned at 16 kHz, answers near 8 kHz
        there, near 4 kHz at 8 kHz and near 16 kHz at 32 kHz: not one continuous-time
        filter. With ``bandlimit`` b, modes turning
        b / 2 or more per step are cut from the output (C = 0), judged with the step
        actually used, so a model trained so never leans on them, and at a lower rate the
        modes its new Nyquist would fold are cut too (the S4 reference code's band limit).
        """
        if self.bandlimit is None:
            return self.C
        kept = self.mode_turns(rate_factor) < self.bandlimit / 2
        return self.C * kept.to(self.C.dtype).unsqueeze(-1)

    def mode_turns(self, rate_factor: float = 1.0) -> Tensor:
        """(H, N/2) cycles each mode turns per step, Im(A) dt / 2 pi: half a turn is Nyquist."""
        return self.A_imag.abs() * self._dt(rate_factor).unsqueeze(-1) / (2 * math.pi)

    def kernel(self, L: int, rate_factor: float = 1.0, naive: bool = False) -> Tensor:
        """The convolution kernel (directions, H, L) for inputs of length L.

        ``naive=True`` builds the same kernel the slow, obvious way (the full
        Vandermonde or Cauchy matrices): the reference for tests and benchmarks.
        """
        lam = torch.view_as_complex(self._lambda_pairs())
        B = torch.view_as_complex(self.B)
        C = torch.view_as_complex(self._output(rate_factor))
        dt = self._dt(rate_factor)
        if self.P is None:
            return sk.s4d_kernel(lam, B, C, dt, L, naive=naive)
        return sk.dplr_kernel(lam, torch.view_as_complex(self.P), B, C, dt, L, naive=naive)

    def forward(self, u: Tensor, rate_factor: float = 1.0) -> Tensor:
        """(B, L, H) -> (B, L, H) by FFT convolution: causal unless bidirectional.

        Runs in float32 with autocast off: FFTs and the kernel's powers need it.
        """
        with _float32(u):
            u = _at_least_float32(u)
            k = self.kernel(u.shape[1], rate_factor)
            return sk.fft_conv(u.transpose(1, 2), k, self.D).transpose(1, 2)

    # ----------------------------------------------------------------- streaming form

    def discrete(self, rate_factor: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
        """The discrete system in real arithmetic: dA (H, N, N), dB (H, N), output row C (H, N)."""
        self._check_streamable()
        lam, dt = self._lambda_pairs(), self._dt(rate_factor)
        if self.P is None:
            increment, dB = sk.zoh_diagonal(lam, self.B, dt)
        else:
            increment, dB = sk.bilinear_dplr(lam, self.P, self.B, dt)
        return sk.add_identity(increment), dB, sk.output_row(self._output(rate_factor)[0])

    def step_matrix(self, K: int, rate_factor: float = 1.0) -> Tensor:
        """``s4_kernels.step_matrix`` for K steps; cached in eval mode without grad.

        The cache is keyed on K, the rate and the parameters' storage and version
        counters, so an optimiser step or ``load_state_dict`` invalidates it. It is
        bypassed while tracing for export: there the matrix is built in the graph
        from the parameters (real ops only) for the runtime to fold.
        """
        if self.training or torch.is_grad_enabled() or _tracing():
            return sk.step_matrix(*self.discrete(rate_factor), self.D, K)
        params = tuple(
            (p.data_ptr(), p._version) for p in self._parameters.values() if p is not None
        )
        key = (K, float(rate_factor), params)
        if key not in self._step_cache:
            if len(self._step_cache) >= 8 or any(k[2] != params for k in self._step_cache):
                self._step_cache.clear()
            self._step_cache[key] = sk.step_matrix(*self.discrete(rate_factor), self.D, K)
        return self._step_cache[key]

    def initial_state(self, batch: int) -> Tensor:
        """Zeros (batch, H, N/2, 2): the complex state as (re, im) pairs."""
        self._check_streamable()
        return self.D.new_zeros(batch, self.d_model, self.d_state // 2, 2)

    def step(self, u: Tensor, state: Tensor, rate_factor: float = 1.0) -> tuple[Tensor, Tensor]:
        """(B, K, H) chunk and (B, H, N/2, 2) state -> (B, K, H) outputs and the new state.

        A chunk is cut into pieces of at most STEP_PIECE steps, one matmul each: the
        step matrix grows as (N + K)^2, and past K ~ N longer pieces only add work.
        """
        with _float32(u):
            u = _at_least_float32(u).transpose(1, 2)
            x = state.flatten(-2)
            K = u.shape[-1]
            if K <= STEP_PIECE:
                y, x = sk.ssm_step(u, x, self.step_matrix(K, rate_factor))
            else:
                outputs = []
                for start in range(0, K, STEP_PIECE):
                    piece = u[..., start : start + STEP_PIECE]
                    y, x = sk.ssm_step(piece, x, self.step_matrix(piece.shape[-1], rate_factor))
                    outputs.append(y)
                y = torch.cat(outputs, dim=-1)
            return y.transpose(1, 2), x.unflatten(-1, state.shape[-2:])

    def _check_streamable(self) -> None:
        if self.bidirectional:
            raise RuntimeError(NO_STREAMING)


class S4Block(nn.Module):
    """Pre-LayerNorm residual block: x + dropout(GLU(Linear(GELU(S4(LN(x))))))."""

    def __init__(self, d_model: int, dropout: float, **layer_args: Any):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.ssm = S4Layer(d_model, **layer_args)
        self.out = nn.Linear(d_model, 2 * d_model)
        self.dropout = nn.Dropout(dropout)

    def _mix(self, y: Tensor) -> Tensor:
        return self.dropout(F.glu(self.out(F.gelu(y)), dim=-1))

    def forward(self, x: Tensor, rate_factor: float = 1.0) -> Tensor:
        return x + self._mix(self.ssm(self.norm(x), rate_factor))

    def step(self, x: Tensor, state: Tensor, rate_factor: float = 1.0) -> tuple[Tensor, Tensor]:
        y, state = self.ssm.step(self.norm(x), state, rate_factor)
        return x + self._mix(y), state


class S4Classifier(KWSModel):
    """Deep S4/S4D classifier: Linear(C, H), residual S4 blocks, LayerNorm, mean pool, head.

    ``kernel`` "dplr" is S4 (family "s4"); "diag-lin", "diag-inv" and "diag-legs" are
    S4D (family "s4d"). Causal by default; ``bidirectional=True`` sees the whole
    clip and has no streaming form. ``ssm_lr`` caps the learning rate of the SSM
    parameters (dt, A, B, P), which also get no weight decay.
    """

    family = "s4"

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        d_model: int = 128,
        d_state: int = 64,
        n_layers: int = 6,
        kernel: str = "dplr",
        dropout: float = 0.1,
        bidirectional: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        ssm_lr: float = 1e-3,
        pool: list[int] | None = None,
        bandlimit: float | None = None,
    ):
        check_arguments(d_model, d_state, kernel, dt_min, dt_max, bandlimit)
        if in_channels < 1 or n_classes < 1 or n_layers < 1:
            raise ValueError(
                f"in_channels, n_classes and n_layers must be positive, got {in_channels}, "
                f"{n_classes}, {n_layers}"
            )
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not ssm_lr > 0:
            raise ValueError(f"ssm_lr must be positive, got {ssm_lr}")
        check_pool(pool, n_layers)
        super().__init__(in_channels, n_classes, d_model)
        self.family = "s4" if kernel == "dplr" else "s4d"
        self.kernel, self.bidirectional, self.ssm_lr = kernel, bidirectional, ssm_lr
        self.encoder = nn.Linear(in_channels, d_model)
        layer_args = dict(
            d_state=d_state,
            kernel=kernel,
            bidirectional=bidirectional,
            dt_min=dt_min,
            dt_max=dt_max,
            bandlimit=bandlimit,
        )
        self.blocks = nn.ModuleList(
            S4Block(d_model, dropout, **layer_args) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        #: per block, the mean-pooling factor applied after it (1: none)
        self.pool = [int(p) for p in pool] if pool is not None else [1] * n_layers
        self.config = {
            "family": self.family,
            "in_channels": in_channels,
            "n_classes": n_classes,
            "d_model": d_model,
            "d_state": d_state,
            "n_layers": n_layers,
            "kernel": kernel,
            "dropout": dropout,
            "bidirectional": bidirectional,
            "dt_min": dt_min,
            "dt_max": dt_max,
            "ssm_lr": ssm_lr,
        }
        if pool is not None:  # only when set: configs from before pooling stay as they were
            self.config["pool"] = list(self.pool)
        if bandlimit is not None:  # the same for the band limit
            self.config["bandlimit"] = bandlimit

    @property
    def time_pool(self) -> int:
        """Input steps per output step at the trained rate: the product of the factors."""
        return math.prod(self.pool)

    def time_pool_at(self, rate_factor: float = 1.0) -> int:
        """Input steps in one whole group at every stage, for input at trained_rate / rate_factor.

        A streamed chunk must be a multiple of it. With whole-sample pools it is the
        product of the factors (one output per group); with an area pool of a/b samples
        it is the shortest run of a-sample periods whose b outputs the later pools
        group whole (``pool_group_at``).
        """
        return self.pool_group_at(rate_factor)[0]

    def pool_group_at(self, rate_factor: float = 1.0) -> tuple[int, int]:
        """(input steps, outputs) of the smallest whole group at every stage."""
        plan = self.pool_plan(rate_factor)
        steps = 1
        for i, (factor, _) in enumerate(plan):
            if isinstance(factor, Fraction) and factor.denominator > 1:
                a, b = factor.numerator, factor.denominator
                rest = math.prod(int(f) for f, _ in plan[i + 1 :])  # whole pools after it
                periods = rest // math.gcd(b, rest)  # b * periods outputs group whole
                return steps * a * periods, b * periods // rest
            steps *= int(factor)
        return steps, 1

    def output_steps(self, length: int, rate_factor: float = 1.0) -> int:
        """Outputs for ``length`` input steps: each stage drops its incomplete last group."""
        for factor, _ in self.pool_plan(rate_factor):
            length = length * factor.denominator // factor.numerator \
                if isinstance(factor, Fraction) else length // factor
        return length

    def pool_plan(self, rate_factor: float = 1.0) -> list[tuple[int | Fraction, float]]:
        """Per block, (pooling factor, dt multiplier) for input at trained_rate / rate_factor.

        The first pool that spans a whole number (>= 1) of the input's samples absorbs
        the rate change; where none does, the first that spans more than one sample
        absorbs it as an area pool (a Fraction of samples); see the module docstring.
        """
        plan, left = [], float(rate_factor)
        for factor in self.pool:
            if left != 1.0 and factor > 1:
                samples = factor / left
                if samples >= 1 and math.isclose(samples, round(samples), abs_tol=1e-9):
                    plan.append((round(samples), left))
                    left = 1.0
                    continue
            plan.append((factor, left))
        if left == 1.0:
            return plan
        plan, left = [], float(rate_factor)
        for factor in self.pool:
            if left != 1.0 and factor > 1 and factor / left > 1:
                plan.append((samples_spanned(factor, left), left))
                left = 1.0
                continue
            plan.append((factor, left))
        if left != 1.0:  # no pool spans a sample: pool by samples, dt x rate_factor everywhere
            return [(factor, float(rate_factor)) for factor in self.pool]
        return plan

    def features(self, x: Tensor, rate_factor: float = 1.0) -> Tensor:
        """(B, L, C) -> (B, output_steps(L), H).

        Where a stage's length is not a whole number of its groups, the last incomplete
        group is dropped: an output step only ever averages whole groups of past
        steps (causal), and a stream of whole-group chunks sees the same groups.
        """
        self._check_input(x, rate_factor)
        if self.output_steps(x.shape[1], rate_factor) < 1:
            raise ValueError(
                f"input of {x.shape[1]} steps is shorter than the model's pooling "
                f"{self.time_pool_at(rate_factor)} (pool={self.pool}): it would give no "
                f"output step"
            )
        h = self.encoder(x)
        for block, (factor, block_rate) in zip(self.blocks, self.pool_plan(rate_factor),
                                               strict=True):
            h = pool_steps(block(h, block_rate), factor)
        return self.norm(h)

    def initial_state(self, batch: int) -> State:
        """One (batch, H, N/2, 2) zero state per layer."""
        return [block.ssm.initial_state(batch) for block in self.blocks]

    def step(self, x: Tensor, state: State, rate_factor: float = 1.0) -> tuple[Tensor, State]:
        """(B, K, C) chunk -> ((B, K // time_pool, H), new state), a few tensor ops per layer.

        Any K without pooling; with it, K must be a multiple of ``time_pool``, so that
        every chunk starts on a group boundary at every stage and no partial group has
        to be carried in the state.
        """
        if self.bidirectional:
            raise RuntimeError(NO_STREAMING)
        self._check_input(x, rate_factor)
        if len(state) != len(self.blocks):
            raise ValueError(f"state has {len(state)} tensors, the model {len(self.blocks)} layers")
        time_pool = self.time_pool_at(rate_factor)
        if x.shape[1] % time_pool:
            raise ValueError(
                f"a streamed chunk must be a multiple of the model's pooling {time_pool} "
                f"steps at this rate (pool={self.pool}), got {x.shape[1]}"
            )
        h = self.encoder(x)
        new_state = []
        plan = self.pool_plan(rate_factor)
        for block, s, (factor, block_rate) in zip(self.blocks, state, plan, strict=True):
            h, s = block.step(h, s, block_rate)
            h = pool_steps(h, factor)
            new_state.append(s)
        return self.norm(h), new_state

    def ssm_parameters(self) -> list[nn.Parameter]:
        """dt, A, B and P of every layer."""
        params = []
        for block in self.blocks:
            for name in S4Layer.SSM_PARAMETERS:
                p = getattr(block.ssm, name)
                if p is not None:
                    params.append(p)
        return params

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """The base groups for everything else, plus the SSM group: lr min(lr, ssm_lr), no decay."""
        ssm = self.ssm_parameters()
        ssm_ids = {id(p) for p in ssm}
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad or id(p) in ssm_ids:
                continue
            (no_decay if p.ndim < 2 or name.endswith("bias") else decay).append(p)
        groups = [
            {"params": decay, "lr": lr, "weight_decay": weight_decay},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0},
            {
                "params": [p for p in ssm if p.requires_grad],
                "lr": min(lr, self.ssm_lr),
                "weight_decay": 0.0,
            },
        ]
        return [g for g in groups if g["params"]]

    def summary(self) -> str:
        cfg = self.config
        return (
            f"{self.family} ({self.kernel} kernel): {self.n_parameters:,} parameters, "
            f"{cfg['n_layers']} layers, d_model={self.d_model}, d_state={cfg['d_state']}, "
            f"{'bidirectional (no streaming)' if self.bidirectional else 'causal'}, "
            f"dt init in [{cfg['dt_min']:g}, {cfg['dt_max']:g}]"
            + (f", pool {self.pool} (1/{self.time_pool} rate out)" if "pool" in cfg else "")
        )

    def _check_input(self, x: Tensor, rate_factor: float) -> None:
        if x.ndim != 3 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects input (B, L, {self.in_channels}), "
                f"got shape {tuple(x.shape)}"
            )
        if (
            isinstance(rate_factor, bool)
            or not isinstance(rate_factor, numbers.Real)
            or not (math.isfinite(rate_factor) and rate_factor > 0)
        ):
            raise ValueError(
                f"rate_factor must be a positive number (trained_rate / input_rate), "
                f"got {rate_factor!r}"
            )


def check_arguments(
    d_model: int, d_state: int, kernel: str, dt_min: float, dt_max: float,
    bandlimit: float | None = None,
) -> None:
    """Refuse configurations that cannot work, naming the argument."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown S4 kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    if d_model < 1:
        raise ValueError(f"d_model must be positive, got {d_model}")
    if d_state < 2 or d_state % 2:
        raise ValueError(f"d_state must be even and >= 2 (conjugate pairs), got {d_state}")
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    if bandlimit is not None and (isinstance(bandlimit, bool) or not bandlimit > 0):
        raise ValueError(
            f"bandlimit must be a positive fraction of the Nyquist frequency (1.0 keeps the "
            f"modes below it) or null, got {bandlimit!r}"
        )


def samples_spanned(factor: int, rate_factor: float) -> Fraction:
    """factor / rate_factor as an exact fraction: the samples a pool spans at the new rate.

    rate_factor is trained_rate / input_rate, a ratio of whole rates, so its exact
    value is the nearest fraction with a small denominator.
    """
    ratio = Fraction(rate_factor).limit_denominator(1_000_000)
    if not math.isclose(float(ratio), rate_factor, rel_tol=1e-12):
        raise ValueError(f"rate_factor {rate_factor!r} is not a ratio of two sample rates")
    return Fraction(factor) / ratio


def pool_steps(h: Tensor, factor: int | Fraction) -> Tensor:
    """Whole-sample mean pooling, or area pooling where the factor is a fraction."""
    if isinstance(factor, Fraction) and factor.denominator > 1:
        return area_pool(h, factor)
    return mean_pool(h, int(factor))


def area_pool(h: Tensor, span: Fraction) -> Tensor:
    """(B, L, H) -> (B, floor(L / span), H): the mean over each span of ``span`` steps.

    Step i holds its value over [i, i + 1); output j averages over [j span, (j + 1) span),
    so a step that straddles two spans is shared between them by overlap. With
    span = a/b the weights repeat every a steps (b outputs). Indices and weights are
    built from the static length, so an ONNX trace keeps them as constants.
    """
    index, weight = area_weights(span.numerator, span.denominator, int(h.shape[1]))
    index, weight = index.to(h.device), weight.to(h.device, h.dtype)
    out = h[:, index[:, 0]] * weight[:, 0, None]
    for k in range(1, index.shape[1]):
        out = out + h[:, index[:, k]] * weight[:, k, None]
    return out


@functools.lru_cache(maxsize=32)
def area_weights(a: int, b: int, length: int) -> tuple[Tensor, Tensor]:
    """(outputs, width) input indices and weights of ``area_pool`` for a span of a/b
    steps over ``length`` steps; cached, since a stream asks for the same chunk each step."""
    outputs = length * b // a
    width = -(-a // b) + 1  # the most steps one span touches
    j = np.arange(outputs)[:, None]
    index = (j * a) // b + np.arange(width)[None, :]
    overlap = np.minimum((j + 1) * a, (index + 1) * b) - np.maximum(j * a, index * b)
    weight = np.clip(overlap, 0, None) / a
    index = np.minimum(index, length - 1)  # weight 0 where clipped
    return torch.from_numpy(index), torch.from_numpy(weight)


def _float32(x: Tensor) -> contextlib.AbstractContextManager:
    """Autocast off (if it is on): FFTs and the powers of dA need float32."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def _at_least_float32(x: Tensor) -> Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _tracing() -> bool:
    """True while torch.export / torch.compile / torch.jit trace the model."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()
