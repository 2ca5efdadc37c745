"""Base densities and `Flow`, the distribution a bijection and a base make together.

``Flow(T, base)`` scores data by the change of variables with ``T`` in the data -> latent direction:

    log p(x) = log p_z(T(x)) + log|det dT/dx|,

and samples by ``x = T^{-1}(z)``, ``z ~ p_z``.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .core import Bijection
from .validation import check_context, check_input

__all__ = ["StandardNormal", "DiagNormal", "Flow", "compile_flow"]

LOG_2PI = math.log(2 * math.pi)


def _event_size(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _sample_count(n: object) -> int:
    """``n`` as the number of samples to draw: an int >= 0 (0 gives empty results); TypeError for a
    non-integer (``2.5``, ``True``, a tensor of several values), ValueError for a negative count."""
    if isinstance(n, bool):
        raise TypeError(f"n (the number of samples) must be an int, got the bool {n}")
    try:
        count = operator.index(n)
    except TypeError:
        raise TypeError(f"n (the number of samples) must be an int, got {type(n).__name__} {n!r}") from None
    if count < 0:
        raise ValueError(f"n (the number of samples) must be >= 0, got {count}")
    return count


class StandardNormal(nn.Module):
    """N(0, I) over ``event_shape``; follows ``.to(device, dtype)`` through a buffer."""

    def __init__(self, event_shape: int | tuple[int, ...]) -> None:
        super().__init__()
        self.event_shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
        self.register_buffer("_ref", torch.zeros(()))

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        d = len(self.event_shape)
        sq = z.square().sum(-1) if d == 1 else z.square().flatten(z.dim() - d).sum(-1)
        return sq.mul(-0.5).sub_(0.5 * _event_size(self.event_shape) * LOG_2PI)

    def rsample(self, n: int, context: Tensor | None = None) -> Tensor:
        return torch.randn(n, *self.event_shape, dtype=self._ref.dtype, device=self._ref.device)

    def as_torch(self, context: Tensor | None = None) -> torch.distributions.Distribution:
        """This density as a ``torch.distributions`` distribution with batch shape ``()`` (``context`` is unused:
        a context-free base is the same for every context row, and torch broadcasts it)."""
        zero = self._ref.expand(self.event_shape)
        normal = torch.distributions.Normal(zero, torch.ones_like(zero))
        return torch.distributions.Independent(normal, len(self.event_shape))


class DiagNormal(StandardNormal):
    """N(loc, diag(exp(log_scale))^2) with learnable ``loc`` and ``log_scale`` (initialised to N(0, I))."""

    def __init__(self, event_shape: int | tuple[int, ...]) -> None:
        super().__init__(event_shape)
        self.loc = nn.Parameter(torch.zeros(self.event_shape))
        self.log_scale = nn.Parameter(torch.zeros(self.event_shape))

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        u = (z - self.loc) * torch.exp(-self.log_scale)
        d = len(self.event_shape)
        return super().log_prob(u) - self.log_scale.sum().expand(z.shape[: z.dim() - d])

    def rsample(self, n: int, context: Tensor | None = None) -> Tensor:
        return self.loc + torch.exp(self.log_scale) * super().rsample(n)

    def as_torch(self, context: Tensor | None = None) -> torch.distributions.Distribution:
        normal = torch.distributions.Normal(self.loc, torch.exp(self.log_scale))
        return torch.distributions.Independent(normal, len(self.event_shape))


class Flow(nn.Module):
    """A normalizing flow: ``transform`` T (data -> latent) on top of ``base`` p_z,

        log p(x | c) = log p_z(T(x; c) | c) + log|det dT/dx|,    x = T^{-1}(z; c),  z ~ p_z(. | c).

    ``context`` is the number of context features ``c`` (0 = unconditional). Inputs are checked
    (shape, NaN/inf, dtype, device, context) unless ``validate=False`` or ``flow.validate = False``.

    Context shapes, one rule for every method: a context is one vector ``(c,)`` or a batch of rows ``(b, c)``.

    * ``log_prob``, ``to_latent`` and ``from_latent`` take points ``(n, *event)`` with a context of ``n`` rows
      (row j goes with point j), or of one row ``(1, c)``, or one vector ``(c,)``: the single row or vector is
      shared by all ``n`` points. Any other number of rows is a ``ValueError``.
    * ``sample(n, context)`` (and ``rsample``, ``sample_and_log_prob``) draws ``n`` points for each context:
      shape ``(n, *event)`` without context or for a vector ``(c,)``, ``(n, b, *event)`` for rows ``(b, c)``.
    * ``as_torch_distribution(context)`` and ``as_pyro(context)`` follow torch: ``batch_shape`` is the
      context's batch shape (``()`` for ``(c,)`` and for an unconditional flow, ``(b,)`` for ``(b, c)``),
      ``sample((n,))`` has shape ``(n, *batch_shape, *event)``, and ``log_prob(x)`` broadcasts ``x`` of shape
      ``(..., *batch_shape, *event)`` (e.g. ``(n, b, D)`` or ``(b, D)``) against the context as torch
      broadcasts parameters.
    * ``log_prob`` also scores a grid: points ``(n, b, *event)`` with rows ``(b, c)`` give ``(n, b)``, point
      ``[i, j]`` with context row ``j`` (the shape `sample` returns, so ``flow.log_prob(flow.sample(n, C), C)``
      works).

    The context pipeline, applied once per call to the context rows given (before they are repeated for the
    points or draws): ``c -> h = E((c - mu_c) / sigma_c)``, and the transform and base see ``h``,
    ``log p(x | c) = log p_z(T(x; h) | h) + log|det dT/dx|``.

    * ``standardize_context=True``: ``mu_c`` and ``sigma_c`` are buffers (in the ``state_dict``, so checkpoints
      carry them), 0 and 1 until fitted; `exactflow.fit` fits them to its training context the first time it
      trains the flow, or call `fit_context` yourself. No need to z-score the context by hand.
    * ``embedding``: an embedding network ``E`` trained jointly with the flow (`exactflow.nets.context_embedding`):
      layer widths such as ``[64, 16]`` (a `exactflow.nets.ContextEmbedding`, saved by its widths) or any
      ``nn.Module`` mapping ``(batch, c)`` to ``(batch, e)`` (its weights are saved; give the module again to
      `exactflow.load`). The transform and a conditional base are then built with ``context=e``
      (`embedded_features`); ``None``: ``E`` is the identity.
    """

    def __init__(self, transform: Bijection, base: nn.Module, context: int = 0, validate: bool = True,
                 embedding: Sequence[int] | nn.Module | None = None, standardize_context: bool = False) -> None:
        super().__init__()
        from .nets import context_embedding

        self.transform = transform
        self.base = base
        self.context_features = context
        self.validate = validate
        self.embedding, self.embedded_features = context_embedding(context, embedding)
        self.standardizes_context = bool(standardize_context) and context > 0
        if self.standardizes_context:
            self.register_buffer("context_loc", torch.zeros(context))
            self.register_buffer("context_scale", torch.ones(context))
            self.register_buffer("context_fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit_context(self, context: Tensor, eps: float = 1e-8) -> Flow:
        """Set the context standardisation ``(c - mu_c) / sigma_c`` to the mean and standard deviation of the
        context rows ``(n >= 2, c)`` (computed in float64, stored in the flow's dtype); a column whose standard
        deviation is below ``eps`` (a constant) keeps ``sigma_c = 1``. Returns the flow. `exactflow.fit` calls this
        on its training context when the flow was built with ``standardize_context=True`` and is not fitted yet.
        """
        if not self.standardizes_context:
            raise ValueError("this flow does not standardise its context: build it with standardize_context=True "
                             "(and context > 0)")
        if not isinstance(context, Tensor) or context.dim() != 2 or context.shape[0] < 2 \
                or context.shape[1] != self.context_features:
            shape = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
            raise ValueError(f"fit_context needs context rows of shape (n >= 2, {self.context_features}), got {shape}")
        c64 = context.detach().to("cpu", torch.float64)
        if not torch.isfinite(c64).all():
            raise ValueError("fit_context: the context contains NaN or inf values")
        std = c64.std(0)
        self.context_loc.copy_(c64.mean(0))
        self.context_scale.copy_(torch.where(std < eps, torch.ones_like(std), std))
        self.context_fitted.fill_(True)
        return self

    def embed(self, context: Tensor | None) -> Tensor | None:
        """The context the transform and base see, ``h = E((c - mu_c) / sigma_c)``, for a vector ``(c,)`` (gives
        ``(e,)``) or rows ``(b, c)`` (gives ``(b, e)``); None stays None. Unchecked: the public methods check."""
        if context is None:
            return None
        if self.standardizes_context:
            context = (context - self.context_loc) / self.context_scale
        if self.embedding is None:
            return context
        h = self.embedding(context.reshape(-1, self.context_features))
        return h.reshape(*context.shape[:-1], h.shape[-1])

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.base.event_shape

    def _ref(self) -> Tensor | None:
        """A tensor carrying the flow's dtype and device (the base always owns a buffer)."""
        ref = self.base._buffers.get("_ref")  # StandardNormal's buffer: found without walking the module tree
        return ref if ref is not None else next(itertools.chain(self.parameters(), self.buffers()), None)

    def _check(self, x: Tensor, context: Tensor | None, what: str = "x") -> Tensor | None:
        """Checks ``x`` and ``context`` (unless validation is off) and returns the context with one row per row
        of ``x``: a ``(1, c)`` row or a ``(c,)`` vector is expanded (a view, no copy) to ``(batch, c)``."""
        if self.validate:
            ref = self._ref()
            check_input(x, self.event_shape, ref, what)
            check_context(context, self.context_features, x.shape[0], ref)
        h = self.embed(context)
        return None if h is None else h.expand(x.shape[0], h.shape[-1])

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """log p(x | context) for ``x`` of shape ``(batch, *event)``, shape ``(batch,)``; the context has
        ``batch`` rows, or one row or vector shared by all. A grid of points ``(n, b, *event)`` with context rows
        ``(b, c)`` gives ``(n, b)`` (see the class docstring)."""
        if isinstance(x, Tensor) and isinstance(context, Tensor) and context.dim() == 2 \
                and x.dim() == len(self.event_shape) + 2:
            return self._log_prob_grid(x, context)
        context = self._check(x, context)
        return self._log_prob(x, context)

    def _log_prob_grid(self, x: Tensor, context: Tensor) -> Tensor:
        """log p(x[i, j] | context[j]) for points ``(n, b, *event)`` and rows ``(b, c)``, shape ``(n, b)``: the
        context embedded once, then repeated for the ``n`` points of each row."""
        n, b = x.shape[:2]
        if b != context.shape[0]:
            raise ValueError(f"x has shape {tuple(x.shape)}, a grid of {n} points for each of {b} context rows, but "
                             f"the context has {context.shape[0]} rows: expected ({b}, {self.context_features})")
        flat = x.reshape(n * b, *x.shape[2:])
        if self.validate:
            ref = self._ref()
            check_input(flat, self.event_shape, ref, "x (flattened from the grid (n, b, *event))")
            check_context(context, self.context_features, None, ref)
        h = self.embed(context)
        h = h.unsqueeze(0).expand(n, *h.shape).reshape(n * b, h.shape[-1])
        return self._log_prob(flat, h).reshape(n, b)

    def _log_prob(self, x: Tensor, context: Tensor | None) -> Tensor:
        """The unchecked tensor computation behind `log_prob` (what `compile` compiles)."""
        z, ladj = self.transform(x, context)
        return self.base.log_prob(z, context) + ladj

    def _inverse(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """latent -> data through the transform, behind the samplers (what `compile` compiles)."""
        return self.transform.inverse(z, context)

    def to_latent(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """z = T(x), the data ``(batch, *event)`` mapped to the base space (the inverse of `from_latent`)."""
        context = self._check(x, context)
        return self.transform(x, context)[0]

    def from_latent(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """x = T^{-1}(z), latents ``(batch, *event)`` mapped to data: the map `sample` applies to base
        draws, and the inverse of `to_latent`. ``z`` is checked like ``x`` in `log_prob`, and the
        context follows the same rule."""
        context = self._check(z, context, what="z")
        return self._inverse(z, context)[0]

    def _expand(self, n: int, context: Tensor | None) -> tuple[int, Tensor | None, tuple[int, ...]]:
        """Sampling shapes: ``n`` draws for each context, with the context repeated to one row per draw.

        Returns (number of draws, context rows for them, leading shape): ``(n, None, (n,))`` unconditionally,
        ``(n, (n, e), (n,))`` for a vector ``(c,)`` and ``(n b, (n b, e), (n, b))`` for rows ``(b, c)``, where the
        rows are the embedded context (`embed`, computed once per context row, then repeated).
        """
        n = _sample_count(n)
        if self.validate:
            check_context(context, self.context_features, None, None if context is None else self._ref())
        context = self.embed(context)
        if context is None:
            return n, None, (n,)
        if context.dim() == 1:
            return n, context.expand(n, -1), (n,)
        b = context.shape[0]
        flat = context.unsqueeze(0).expand(n, *context.shape).reshape(n * b, context.shape[1])
        return n * b, flat, (n, b)

    def rsample(self, n: int, context: Tensor | None = None) -> Tensor:
        """Reparameterised samples (gradients flow to the parameters); shapes as in `sample`."""
        total, ctx, lead = self._expand(n, context)
        x, _ = self._inverse(self.base.rsample(total, ctx), ctx)
        return x.reshape(*lead, *self.event_shape)

    @torch.no_grad()
    def sample(self, n: int, context: Tensor | None = None) -> Tensor:
        """``n`` samples: shape ``(n, *event)`` (also for one context vector ``(c,)``), or ``(n, b, *event)`` for a
        context of shape ``(b, c)`` (every context row gets ``n`` samples, all in one batched pass). ``n`` is an
        int >= 0 (``n = 0`` gives empty results of those shapes); another type raises TypeError, a negative ``n``
        ValueError."""
        return self.rsample(n, context)

    def sample_and_log_prob(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Samples and their log-density in one latent -> data pass: log q(x) = log p_z(z) - log|det dx/dz|."""
        total, ctx, lead = self._expand(n, context)
        z = self.base.rsample(total, ctx)
        x, ladj = self._inverse(z, ctx)
        log_q = self.base.log_prob(z, ctx) - ladj
        return x.reshape(*lead, *self.event_shape), log_q.reshape(lead)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.log_prob(x, context)

    def as_torch_distribution(self, context: Tensor | None = None) -> torch.distributions.TransformedDistribution:
        """This flow as a ``torch.distributions.TransformedDistribution``, in torch's direction: the transform maps
        latent -> data (``T^{-1}``), so its ``log_prob`` is the change of variables above. A conditional flow binds
        ``context``: ``(c,)`` gives batch shape ``()``, ``(b, c)`` batch shape ``(b,)``, and ``sample((n,))`` then has
        shape ``(n, b, *event)`` (see the class docstring). Sampling is reparameterised (``rsample``).
        """
        return self._torch_distribution(torch.distributions.TransformedDistribution, context)

    def as_pyro(self, context: Tensor | None = None) -> torch.distributions.TransformedDistribution:
        """This flow as a Pyro distribution for ``pyro.sample`` (shapes as in `as_torch_distribution`).

        Pyro needs its own distribution classes (callable, with ``score_parts``, ``to_event``, ``mask``), so this
        is ``pyro.distributions.TransformedDistribution`` over the same base and transform; Pyro is imported here,
        never when exactflow is. To fit the flow in SVI (as a guide or in a model), register its parameters::

            def guide(y):
                pyro.module("q", flow)
                pyro.sample("z", flow.as_pyro())
        """
        import pyro.distributions

        return self._torch_distribution(pyro.distributions.TransformedDistribution, context)

    def _torch_distribution(self, cls: type, context: Tensor | None) -> torch.distributions.TransformedDistribution:
        """``cls(base, [T^{-1}])`` with ``context`` bound to the base and the transform."""
        if self.context_features and context is None:
            raise ValueError("a conditional flow needs the context to bind: pass context=...")
        if self.validate:
            check_context(context, self.context_features, None, self._ref())
        if not hasattr(self.base, "as_torch"):
            raise ValueError(f"base {type(self.base).__name__} has no torch.distributions equivalent")
        context = self.embed(context)
        t = self.transform.as_torch_transform(event_dim=len(self.event_shape), context=context)
        return cls(self.base.as_torch(context), [t])


__all__ += ["ConditionalDiagNormal"]


class ConditionalDiagNormal(StandardNormal):
    """N(mu(c), diag(exp(log_sigma(c)))^2) with ``(mu, log_sigma) = MLP(c)`` from a ``(batch, context)`` context;
    the last layer starts at zero, so it starts as N(0, I) for every context.

    ``log_prob(z, c)`` needs one context row per ``z`` row; ``rsample(n, c)`` needs ``c`` with ``n`` rows
    (`Flow` repeats each context row for you); ``as_torch(c)`` takes ``(c,)`` or ``(b, c)``.
    """

    def __init__(self, event_shape: int | tuple[int, ...], context: int, hidden: tuple[int, ...] = (64,)) -> None:
        super().__init__(event_shape)
        if context < 1:
            raise ValueError(f"ConditionalDiagNormal needs context >= 1 features, got {context}")
        from .nets import MLP

        self.context_features = context
        self.net = MLP(context, 2 * _event_size(self.event_shape), hidden)

    def _params(self, context: Tensor | None, rows: int) -> tuple[Tensor, Tensor]:
        if context is None:
            raise ValueError(f"ConditionalDiagNormal needs a context of shape ({rows}, {self.context_features}), "
                             "got None")
        if context.dim() != 2 or context.shape != (rows, self.context_features):
            raise ValueError(f"context has shape {tuple(context.shape)}: expected ({rows}, {self.context_features})")
        return self._loc_log_scale(context)

    def _loc_log_scale(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """mu(c) and log_sigma(c), each of shape ``(*context.shape[:-1], *event)``."""
        batch = context.shape[:-1]
        loc, log_scale = self.net(context.reshape(-1, self.context_features)).chunk(2, dim=-1)
        return loc.reshape(*batch, *self.event_shape), log_scale.reshape(*batch, *self.event_shape)

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        loc, log_scale = self._params(context, z.shape[0])
        d = len(self.event_shape)
        return super().log_prob((z - loc) * torch.exp(-log_scale)) - log_scale.flatten(z.dim() - d).sum(-1)

    def rsample(self, n: int, context: Tensor | None = None) -> Tensor:
        loc, log_scale = self._params(context, n)
        return loc + torch.exp(log_scale) * torch.randn_like(loc)

    def as_torch(self, context: Tensor | None = None) -> torch.distributions.Distribution:
        """N(mu(c), diag(sigma(c))^2) as a torch distribution with batch shape ``context.shape[:-1]``."""
        if context is None:
            raise ValueError(f"ConditionalDiagNormal needs a context of shape (batch, {self.context_features}), "
                             "got None")
        loc, log_scale = self._loc_log_scale(context)
        return torch.distributions.Independent(torch.distributions.Normal(loc, torch.exp(log_scale)),
                                               len(self.event_shape))


def compile_flow(flow: Flow, **options: Any) -> Flow:
    """Compile ``flow``'s hot paths with ``torch.compile(..., **options)`` and return the same flow.

    The data -> latent computation behind ``log_prob`` (transform + base density) and the latent -> data
    pass behind ``sample``/``rsample``/``sample_and_log_prob`` are compiled; the input checks stay eager
    (they raise ``ValueError``, which a compiled graph should not contain), so the API, the parameters
    and ``state_dict`` are unchanged. The results equal eager ones up to floating-point reassociation.
    Compilation happens on the first call of each kind (and again for new input shapes, unless
    ``dynamic=True``). Dynamo keeps one cache for all flows (they share the code compiled) and runs eager
    after ``torch._dynamo.config.recompile_limit`` (8) compilations of it: compiling many flows or shapes in
    one process needs ``torch._dynamo.reset()`` in between. A compiled flow cannot be pickled whole; save its
    ``state_dict``. Exported as ``exactflow.compile``.
    """
    if not isinstance(flow, Flow):
        raise ValueError(f"compile expects an exactflow Flow, got {type(flow).__name__}")
    flow._log_prob = torch.compile(flow._log_prob, **options)
    flow._inverse = torch.compile(flow._inverse, **options)
    return flow


__all__ += ["CircularUniform"]


class CircularUniform(StandardNormal):
    """The uniform density on the torus ``[-pi, pi)^d`` (the circle for ``d = 1``): ``log p(z) = -d log(2 pi)`` for
    ``z`` in ``[-pi, pi]^d``, ``-inf`` elsewhere; the base of flows on angles such as `exactflow.flows.CircularNSF`.

    Examples:
        >>> base = CircularUniform(2)
        >>> base.log_prob(torch.zeros(3, 2))
        tensor([-3.6758, -3.6758, -3.6758])
        >>> bool(base.rsample(1000).abs().max() <= math.pi)
        True
    """

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        d = len(self.event_shape)
        inside = (z.abs() <= math.pi).flatten(z.dim() - d).all(-1)
        return torch.where(inside, -_event_size(self.event_shape) * math.log(2 * math.pi), -math.inf).to(z.dtype)

    def rsample(self, n: int, context: Tensor | None = None) -> Tensor:
        u = torch.rand(n, *self.event_shape, dtype=self._ref.dtype, device=self._ref.device)
        return (2 * u - 1) * math.pi

    def as_torch(self, context: Tensor | None = None) -> torch.distributions.Distribution:
        """This density as a ``torch.distributions`` distribution with batch shape ``()``."""
        low = self._ref.expand(self.event_shape) - math.pi
        return torch.distributions.Independent(torch.distributions.Uniform(low, low + 2 * math.pi),
                                               len(self.event_shape))
