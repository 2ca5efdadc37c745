"""Continuous normalizing flows: the bijection is the time-1 map of an ODE ``dx/dt = v(x, t, context)``.

Convention (stated once): **noise lives at t = 0 and data at t = 1**. ``forward`` (data -> latent)
integrates from t = 1 down to t = 0, ``inverse`` (latent -> data) from t = 0 up to t = 1. Along a path
the log-density obeys ``d log p_t(x_t) / dt = -div v(x_t, t)``, so with ``l`` integrated alongside,
``dl/dt = div v``:

    forward:  log|det dz/dx| = -int_0^1 div v(x_t, t) dt,      inverse: log|det dx/dz| = +int_0^1 div v dt.

The ODE is solved by fixed-step RK4 (``steps`` steps), written here rather than taken from torchdiffeq:
the discretised map is then one fixed, deterministic function of each row (an adaptive solver picks its
steps from the error norm over the whole batch, so a row's output would depend on the other rows), it is
differentiated by plain autograd (maximum-likelihood training backpropagates through the solver), and
the divergence is integrated with the same RK4 weights, so the reported log|det| matches the autograd
Jacobian of the discretised map up to the solver's O(h^4) error. The round trip ``inverse(forward(x))``
is exact only up to that error too (``exact_inverse = False``).

``solver="dopri5"`` instead hands the augmented state ``(x, l)`` to torchdiffeq's adaptive Dormand-Prince
5(4) (``rtol``, ``atol``; plain backpropagation through its steps, not the adjoint). Its step sizes come from
one error norm over the whole batch, so a row's result depends on the other rows, but only through the step
sizes: rows of different batches differ by solver-tolerance-level amounts, not by anything the model does.
The registry's generic contract tests use RK4.

The divergence is exact (``D`` vector-Jacobian products per evaluation) with ``trace="exact"``, or the
Hutchinson **estimate** ``e^T (dv/dx) e`` with one Rademacher ``e`` per solve (unbiased, one product per
evaluation) with ``trace="hutchinson"``; only the exact trace gives an exact log-likelihood.

Training: `flow_matching_loss` (conditional flow matching on the straight path, no ODE solve),
or maximum likelihood ``-flow.log_prob(x).mean()`` through the solver (FFJORD).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..core import Bijection
from ..nets import MLP, join_context
from ..registry import TRANSFORMS

__all__ = ["COUPLINGS", "SOLVERS", "CNF", "VelocityNet", "flow_matching_loss", "ot_pairing", "reflow", "straightness"]

SOLVERS = ("rk4", "dopri5")


class VelocityNet(nn.Module):
    """``v(x, t, context)``: an MLP on ``[x, t, sin(pi k t), cos(pi k t) (k = 1..frequencies), context]``.

    The last layer starts at zero (v = 0: the CNF starts as the identity); activations default to SiLU so
    that v is smooth, which RK4 needs for its accuracy.

    Args:
        features: Number of features ``D`` of ``x`` (and of ``v``).
        context: Number of context features (0: none).
        hidden: Hidden layer sizes of the MLP.
        activation: Activation of the MLP.
        frequencies: Number of Fourier frequencies of the time embedding.
    """

    def __init__(self, features: int, context: int = 0, hidden: Sequence[int] = (64, 64),
                 activation: str = "silu", frequencies: int = 4) -> None:
        super().__init__()
        self.register_buffer("freqs", math.pi * torch.arange(1, frequencies + 1, dtype=torch.get_default_dtype()))
        self.net = MLP(features + 1 + 2 * frequencies + context, features, hidden, activation)

    def forward(self, x: Tensor, t: Tensor, context: Tensor | None = None) -> Tensor:
        t = t.to(x.dtype).expand(x.shape[0], 1)
        angles = t * self.freqs.to(x.dtype)
        return self.net(join_context(torch.cat([x, t, angles.sin(), angles.cos()], -1), context))


@TRANSFORMS.register("CNF", tolerance=1e-4, test_kwargs={"hidden": (8,), "steps": 16})
class CNF(Bijection):
    """Continuous normalizing flow on vectors: the time-1 map of ``dx/dt = v(x, t, context)``, solved by fixed-step
    RK4 or adaptive dopri5.

    Data -> latent (``forward``) solves from t = 1 (data) to t = 0 (latent)::

        z = x(0),  x(1) = x,      log|det dz/dx| = -int_0^1 div v(x_t, t) dt,

    and latent -> data (``inverse``) from t = 0 to t = 1 with ``log|det dx/dz| = +int_0^1 div v dt``
    (module doc). The round trip is exact up to the solver's error (``exact_inverse = False``).

    With ``solver="dopri5"`` the state ``(x, l)``, ``dl/dt = div v``, is integrated by torchdiffeq's adaptive
    Dormand-Prince 5(4) pair to the tolerances ``rtol``, ``atol``. Batch independence then holds only up to
    those tolerances: the step sizes are chosen from an error norm over the whole batch, so other rows change a
    row's result through the steps taken (by about the tolerance), never otherwise. After each solve ``nfe``
    holds the number of evaluations of ``v`` it made (``4 * steps`` for RK4), a measure of how straight the
    learned paths are.

    Args:
        features: Number of features ``D``.
        context: Number of context features given to the velocity field (0: unconditional).
        hidden: Hidden layer sizes of the default `VelocityNet`.
        steps: Number of fixed RK4 steps over ``[0, 1]``.
        trace: ``"exact"`` (D vector-Jacobian products per evaluation) or ``"hutchinson"`` (an unbiased
            estimate of the divergence, so the log-det is an estimate too).
        velocity: A module ``v(x, t, context)`` replacing the default `VelocityNet`.
        activation: Activation of the default `VelocityNet` (smooth ones suit RK4).
        solver: ``"rk4"`` (fixed steps, exactly batch-independent) or ``"dopri5"`` (adaptive; needs torchdiffeq,
            the ``fm`` extra).
        rtol: Relative tolerance of ``dopri5``.
        atol: Absolute tolerance of ``dopri5``.

    References:
        R. T. Q. Chen, Y. Rubanova, J. Bettencourt, D. Duvenaud. Neural Ordinary Differential Equations (2018);
        W. Grathwohl, R. T. Q. Chen, J. Bettencourt, I. Sutskever, D. Duvenaud. FFJORD (2018);
        Y. Lipman, R. T. Q. Chen, H. Ben-Hamu, M. Nickel, M. Le. Flow Matching for Generative Modeling (2022).
        https://arxiv.org/abs/1806.07366, https://arxiv.org/abs/1810.01367, https://arxiv.org/abs/2210.02747

    Examples:
        >>> layer = CNF(2, hidden=(8,), steps=4)
        >>> _ = torch.nn.init.normal_(layer.velocity.net[-1].weight, std=0.3)  # leave the identity it starts as
        >>> x = torch.randn(4, 2)
        >>> z, ladj = layer(x)
        >>> z.shape, ladj.shape
        (torch.Size([4, 2]), torch.Size([4]))
        >>> torch.allclose(layer.inverse(z)[0], x, atol=1e-4)  # up to the RK4 error
        True
        >>> layer.solver = "dopri5"  # adaptive: as many evaluations of v as the tolerances need
        >>> z5, _ = layer(x)
        >>> torch.allclose(layer.inverse(z5)[0], x, atol=1e-3), layer.nfe > 0  # up to the tolerances
        (True, True)
    """

    exact_inverse = False
    analytic_forward = False

    def __init__(self, features: int, context: int = 0, hidden: Sequence[int] = (64, 64), steps: int = 32,
                 trace: str = "exact", velocity: nn.Module | None = None, activation: str = "silu",
                 solver: str = "rk4", rtol: float = 1e-5, atol: float = 1e-5) -> None:
        super().__init__()
        if trace not in ("exact", "hutchinson"):
            raise ValueError(f"trace must be 'exact' or 'hutchinson', got {trace!r}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
        if not (rtol > 0 and atol > 0):
            raise ValueError(f"rtol and atol must be positive, got {rtol} and {atol}")
        self.features, self.steps, self.trace = features, steps, trace
        self.solver, self.rtol, self.atol = solver, rtol, atol
        self.nfe = 0  # evaluations of the velocity field in the last solve
        self.velocity = velocity if velocity is not None else VelocityNet(features, context, hidden, activation)

    def _dynamics(self, x: Tensor, t: Tensor, context: Tensor | None, noise: Tensor | None,
                  logdet: bool, create_graph: bool) -> tuple[Tensor, Tensor | None]:
        """``(v(x, t), div v(x, t))``; the divergence only when ``logdet``."""
        if not logdet:
            return self.velocity(x, t, context), None
        if not create_graph:  # no graph is kept: forward mode, which also runs on inference-mode weights
            return self._dynamics_forward_mode(x, t, context, noise)
        xg = x if x.requires_grad else x.detach().requires_grad_(True)
        v = self.velocity(xg, t, context)
        if noise is None:
            basis = torch.eye(self.features, dtype=v.dtype, device=v.device).unsqueeze(1).expand(-1, *v.shape)
            rows = torch.autograd.grad(v, xg, basis, create_graph=True, is_grads_batched=True)[0]
            div = torch.diagonal(rows, dim1=0, dim2=2).sum(-1)  # rows[i, b, j] = dv_i/dx_j at row b
        else:
            vjp = torch.autograd.grad((v * noise).sum(), xg, create_graph=True)[0]
            div = (vjp * noise).sum(-1)
        return v, div

    def _dynamics_forward_mode(self, x: Tensor, t: Tensor, context: Tensor | None,
                               noise: Tensor | None) -> tuple[Tensor, Tensor]:
        """`_dynamics` without a graph: the same divergence by forward-mode derivatives (``torch.func``),
        which also accept tensors made in inference mode (autograd cannot record those)."""
        with torch.inference_mode(False), torch.no_grad():
            x = x.clone()
            ctx = None if context is None else context.clone()
            v = self.velocity(x, t, ctx)
            if noise is not None:
                jv = torch.func.jvp(lambda y: self.velocity(y, t, ctx), (x,), (noise.clone(),))[1]
                return v, (jv * noise).sum(-1)

            def row(xi: Tensor, ci: Tensor | None) -> Tensor:
                return self.velocity(xi[None], t, None if ci is None else ci[None])[0]

            jac = torch.func.vmap(torch.func.jacfwd(row), in_dims=(0, None if ctx is None else 0))(x, ctx)
            return v, torch.diagonal(jac, dim1=1, dim2=2).sum(-1)

    def integrate(self, x: Tensor, t0: float, t1: float, context: Tensor | None = None,
                  logdet: bool = True) -> tuple[Tensor, Tensor]:
        """Solve from ``t0`` to ``t1`` (``solver``); returns ``x(t1)`` and ``int_{t0}^{t1} div v dt`` (zeros if not
        ``logdet``), and sets ``nfe``."""
        if x.dim() != 2 or x.shape[1] != self.features:
            raise ValueError(f"CNF expects input of shape (batch, {self.features}), got {tuple(x.shape)}")
        create_graph = torch.is_grad_enabled()
        noise = None
        if logdet and self.trace == "hutchinson":
            noise = torch.randint(0, 2, x.shape, device=x.device).to(x.dtype) * 2 - 1
        if self.solver == "dopri5":
            return self._integrate_adaptive(x, t0, t1, context, noise, logdet, create_graph)
        self.nfe = 4 * self.steps
        h = (t1 - t0) / self.steps
        total = x.new_zeros(x.shape[0])
        for n in range(self.steps):
            t = x.new_full((1, 1), t0 + n * h)
            k1, d1 = self._dynamics(x, t, context, noise, logdet, create_graph)
            k2, d2 = self._dynamics(x + 0.5 * h * k1, t + 0.5 * h, context, noise, logdet, create_graph)
            k3, d3 = self._dynamics(x + 0.5 * h * k2, t + 0.5 * h, context, noise, logdet, create_graph)
            k4, d4 = self._dynamics(x + h * k3, t + h, context, noise, logdet, create_graph)
            x = x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
            if logdet:
                total = total + (h / 6) * (d1 + 2 * d2 + 2 * d3 + d4)
        return x, total

    def _integrate_adaptive(self, x: Tensor, t0: float, t1: float, context: Tensor | None, noise: Tensor | None,
                            logdet: bool, create_graph: bool) -> tuple[Tensor, Tensor]:
        """dopri5 (torchdiffeq) on the state ``(x, l)``; the log-det part only when ``logdet``."""
        from torchdiffeq import odeint

        count = [0]

        def f(t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            count[0] += 1
            v, div = self._dynamics(state[0], t.reshape(1, 1).to(x.dtype), context, noise, logdet, create_graph)
            return (v, div) if logdet else (v,)

        start = (x, x.new_zeros(x.shape[0])) if logdet else (x,)
        times = torch.tensor([t0, t1], dtype=x.dtype, device=x.device)
        end = odeint(f, start, times, rtol=self.rtol, atol=self.atol, method="dopri5")
        self.nfe = count[0]
        return end[0][-1], end[1][-1] if logdet else x.new_zeros(x.shape[0])

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.integrate(x, 1.0, 0.0, context)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.integrate(z, 0.0, 1.0, context)


COUPLINGS = ("independent", "ot")


def ot_pairing(x0: Tensor, x1: Tensor) -> Tensor:
    """Reorder the noise ``x0`` so that row ``i`` is paired with data row ``x1[i]`` by an exact optimal transport
    plan between the two empirical measures (minibatch OT; Tong et al. 2023, Pooladian et al. 2023).

    With uniform weights ``1/B`` on both sides and costs ``C_ij = ||x0_i - x1_j||^2``, the exact plan (POT's
    ``ot.emd``, a network-simplex solve) is a vertex of the Birkhoff polytope, i.e. ``P = Pi / B`` for a
    permutation ``Pi``; the returned ``x0[sigma]`` with ``sigma(j) = argmax_i P_ij`` minimises
    ``sum_j ||x0_sigma(j) - x1_j||^2`` over all pairings. Rows of ``x1`` (and any context that goes with them)
    keep their order; only the noise moves. The permutation carries no gradient (the noise has none).

    Args:
        x0: Noise, shape ``(B, D)``.
        x1: Data, shape ``(B, D)``.

    Returns:
        ``x0`` permuted, shape ``(B, D)``.

    References:
        A. Tong, N. Malkin, G. Huguet, Y. Zhang, J. Rector-Brooks, K. Fatras, G. Wolf, Y. Bengio. Improving and
        generalizing flow-based generative models with minibatch optimal transport (2023);
        A.-A. Pooladian, H. Ben-Hamu, C. Domingo-Enrich, B. Amos, Y. Lipman, R. T. Q. Chen. Multisample flow
        matching: straightening flows with minibatch couplings (2023).
        https://arxiv.org/abs/2302.00482, https://arxiv.org/abs/2304.14772

    Examples:
        >>> x1 = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
        >>> ot_pairing(torch.tensor([[9.0, 0.0], [1.0, 0.0]]), x1)
        tensor([[1., 0.],
                [9., 0.]])
    """
    import ot  # POT, a dependency of the ``fm`` extra; imported here so that the rest of exactflow needs no POT

    if x0.shape != x1.shape or x0.dim() != 2:
        raise ValueError(f"ot_pairing needs x0 and x1 of the same shape (B, D), got {tuple(x0.shape)} and "
                         f"{tuple(x1.shape)}")
    n = x0.shape[0]
    if n < 2:
        return x0
    cost = torch.cdist(x0.detach().double(), x1.detach().double()).square().cpu().numpy()
    weights = np.full(n, 1.0 / n)
    plan = ot.emd(weights, weights, cost)
    sigma = torch.from_numpy(np.asarray(plan).argmax(0)).to(x0.device)  # column j: the noise row paired with x1_j
    return x0[sigma]


def flow_matching_loss(cnf: CNF | nn.Module, x: Tensor, context: Tensor | None = None,
                       coupling: str = "independent", x0: Tensor | None = None) -> Tensor:
    """Conditional flow matching on the straight path between paired noise and data.

    With ``x_1 = x`` (data), ``x_0 ~ N(0, I)`` paired to it by ``coupling``, ``t ~ U(0, 1)`` and
    ``x_t = (1 - t) x_0 + t x_1``, the loss is::

        L(v) = E || v(x_t, t, c) - (x_1 - x_0) ||^2

    (summed over features, averaged over the batch). ``coupling="independent"`` draws ``x_0`` independently of
    ``x_1`` (Lipman et al. 2023; Liu et al. 2023); ``coupling="ot"`` reorders the batch's noise by an exact
    minibatch optimal transport plan on squared Euclidean costs (`ot_pairing`; Tong et al. 2023), which keeps
    the marginals (each ``x_0`` is still N(0, I), each ``x_1`` still data) but shortens and straightens the
    paths, so the learned ODE needs fewer solver steps. With a context, only the noise is reordered: each data
    row keeps its own context (the pairing ignores the context; conditional OT within one context value would
    need a context-aware cost).

    Args:
        cnf: A `CNF`, or a `Flow` whose transform is one (its base must be N(0, I)).
        x: Data, shape ``(B, D)``.
        context: Context rows, shape ``(B, C)``, or None.
        coupling: ``"independent"`` or ``"ot"`` (needs POT, the ``fm`` extra).
        x0: Noise already paired with ``x`` row by row (as in `reflow`), shape ``(B, D)``; ``coupling`` must then
            be ``"independent"`` (the pairing is given).

    Returns:
        The scalar loss.

    References:
        Y. Lipman, R. T. Q. Chen, H. Ben-Hamu, M. Nickel, M. Le. Flow Matching for Generative Modeling (2023);
        X. Liu, C. Gong, Q. Liu. Flow straight and fast: learning to generate and transfer data with rectified
        flow (2023); A. Tong et al. Improving and generalizing flow-based generative models with minibatch
        optimal transport (2023).
        https://arxiv.org/abs/2210.02747, https://arxiv.org/abs/2209.03003, https://arxiv.org/abs/2302.00482

    Examples:
        >>> cnf = CNF(2, hidden=(8,), steps=4)
        >>> flow_matching_loss(cnf, torch.randn(16, 2), coupling="ot").shape
        torch.Size([])
    """
    if coupling not in COUPLINGS:
        raise ValueError(f"coupling must be one of {', '.join(COUPLINGS)}, got {coupling!r}")
    if not isinstance(cnf, CNF):
        cnf = getattr(cnf, "transform", None)
        if not isinstance(cnf, CNF):
            raise ValueError("flow_matching_loss needs a CNF or a Flow whose transform is a CNF")
    if x.dim() != 2 or x.shape[1] != cnf.features:
        raise ValueError(f"expected data of shape (batch, {cnf.features}), got {tuple(x.shape)}")
    if x0 is None:
        x0 = torch.randn_like(x)
        if coupling == "ot":
            x0 = ot_pairing(x0, x)
    elif coupling != "independent" or x0.shape != x.shape:
        raise ValueError(f"given x0 (shape {tuple(x0.shape)}) must match x ({tuple(x.shape)}) and comes with "
                         f"coupling='independent', got {coupling!r}")
    t = torch.rand(x.shape[0], 1, dtype=x.dtype, device=x.device)
    xt = (1 - t) * x0 + t * x
    return (cnf.velocity(xt, t, context) - (x - x0)).square().sum(-1).mean()


def _as_cnf(cnf: CNF | nn.Module, what: str) -> CNF:
    inner = cnf if isinstance(cnf, CNF) else getattr(cnf, "transform", None)
    if not isinstance(inner, CNF):
        raise ValueError(f"{what} needs a CNF or a Flow whose transform is a CNF")
    return inner


@torch.no_grad()
def straightness(cnf: CNF | nn.Module, z: Tensor, context: Tensor | None = None, steps: int = 32) -> Tensor:
    """How far the ODE paths from the noise ``z`` are from straight lines (Liu et al. 2023)::

        S = int_0^1 E || (x_1 - x_0) - v(x_t, t) ||^2 dt >= 0,

    zero exactly when every path moves at constant velocity, i.e. when one Euler step is exact. The path is
    solved by RK4 with ``steps`` steps from ``x_0 = z`` and the integral taken by the trapezoid rule on that grid.

    Args:
        cnf: A `CNF` or a `Flow` whose transform is one.
        z: Noise, shape ``(B, D)``.
        context: Context rows, shape ``(B, C)``, or None.
        steps: RK4 steps (and quadrature nodes) over ``[0, 1]``.

    Returns:
        ``S`` (a scalar tensor).

    References:
        X. Liu, C. Gong, Q. Liu. Flow straight and fast: learning to generate and transfer data with rectified
        flow (2023). https://arxiv.org/abs/2209.03003

    Examples:
        >>> straightness(CNF(2, hidden=(8,)), torch.randn(8, 2))  # v = 0 at initialisation: straight (and still)
        tensor(0.)
    """
    cnf = _as_cnf(cnf, "straightness")
    h, x, velocities = 1.0 / steps, z, []
    for n in range(steps + 1):
        t = z.new_full((1, 1), n * h)
        v = cnf.velocity(x, t, context)
        velocities.append(v)
        if n < steps:
            k2 = cnf.velocity(x + 0.5 * h * v, t + 0.5 * h, context)
            k3 = cnf.velocity(x + 0.5 * h * k2, t + 0.5 * h, context)
            k4 = cnf.velocity(x + h * k3, t + h, context)
            x = x + (h / 6) * (v + 2 * k2 + 2 * k3 + k4)
    gaps = torch.stack([(x - z - v).square().sum(-1).mean() for v in velocities])
    return h * (gaps.sum() - 0.5 * (gaps[0] + gaps[-1]))


class _ReflowPairs:
    """An objective for `exactflow.fit`: flow matching on fixed pairs ``(x0, x1)`` (and context)."""

    name = "reflow"
    label = "FM loss"
    unit = "FM loss"

    def __init__(self, x0: Tensor, x1: Tensor, context: Tensor | None) -> None:
        self.x0, self.x1, self.context = x0, x1, context

    def check(self, model: nn.Module) -> None:
        _as_cnf(model, "reflow")

    def initialize(self, model: nn.Module, size: int) -> None:
        """Nothing to initialise."""

    def batch(self, generator: torch.Generator, size: int, step: int, shard: tuple[int, int] = (0, 1)) -> tuple:
        idx = torch.randint(self.x0.shape[0], (size,), generator=generator, device=self.x0.device)
        rank, world = shard
        idx = idx[rank::world]
        return self.x0[idx], self.x1[idx], None if self.context is None else self.context[idx]

    def loss(self, model: nn.Module, batch: tuple) -> Tensor:
        x0, x1, c = batch
        return flow_matching_loss(model, x1, c, x0=x0)

    def report(self, value: float) -> float:
        return float(value)

    def score(self, model: nn.Module) -> float | None:
        return None


def reflow(cnf: CNF | nn.Module, n: int, context: Tensor | None = None, steps: int = 500, batch_size: int = 256,
           lr: float = 1e-3, **options: Any) -> Any:
    """Rectified-flow reflow (Liu et al. 2023): straighten a trained CNF's paths by flow matching on its own pairs.

    Draws ``x_0 ~ N(0, I)`` (``n`` rows), solves ``x_1 = phi_1(x_0)`` with the CNF as it is (its ``solver``), and
    fine-tunes the velocity field in place by `flow_matching_loss` on the fixed pairs ``(x_0, x_1)`` through
    `exactflow.fit`::

        min_v  E_{t, (x_0, x_1)} || v((1 - t) x_0 + t x_1, t) - (x_1 - x_0) ||^2 .

    The pairs are a deterministic coupling, so paths of the new flow cross less and are straighter (lower
    `straightness`, fewer dopri5 evaluations), while the marginal at t = 1 stays the CNF's own (up to the fit).

    Args:
        cnf: A `CNF` or a `Flow` whose transform is one; trained in place.
        n: Number of pairs to draw.
        context: For a conditional CNF, ``n`` rows of context (each pair is drawn and fitted under its row).
        steps: Training steps of the fine-tuning.
        batch_size: Pairs per step.
        lr: Adam learning rate.
        **options: Any other keyword of `exactflow.fit` (``schedule``, ``clip_grad``, ``seed``, ...).

    Returns:
        The `History` of the fine-tuning.

    References:
        X. Liu, C. Gong, Q. Liu. Flow straight and fast: learning to generate and transfer data with rectified
        flow (2023). https://arxiv.org/abs/2209.03003

    Examples:
        >>> cnf = CNF(2, hidden=(8,), steps=4)
        >>> history = reflow(cnf, 64, steps=2, batch_size=32, progress=False)
        >>> len(history.train) > 0
        True
    """
    from ..training import fit

    inner = _as_cnf(cnf, "reflow")
    ref = next(inner.parameters())
    if context is not None and context.shape[0] != n:
        raise ValueError(f"reflow: context has {context.shape[0]} rows, expected n = {n}")
    x0 = torch.randn(n, inner.features, dtype=ref.dtype, device=ref.device)
    with torch.no_grad():
        x1 = inner.integrate(x0, 0.0, 1.0, context, logdet=False)[0]
    return fit(cnf, objective=_ReflowPairs(x0, x1, context), steps=steps, batch_size=batch_size, lr=lr, **options)
