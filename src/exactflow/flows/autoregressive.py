"""Autoregressive and spline flows: MAF, IAF, NSF (coupling), NSFAutoregressive and BNAF.

Every preset takes ``context=`` (number of context features); with ``conditional_base=True`` a conditional
flow also draws its base from `ConditionalDiagNormal` instead of N(0, I).
Cost of the two directions (D features): MAF and NSFAutoregressive score data in one pass per layer and
sample in D; IAF the reverse; NSF (coupling) does both in one; BNAF scores in one and samples by bisection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from ..core import Bijection, Compose, Inverse
from ..distributions import ConditionalDiagNormal, Flow, StandardNormal
from ..nets import context_embedding
from ..registry import FLOWS
from ..transforms.autoregressive import MaskedAffineAutoregressive
from ..transforms.bnaf import BNAF as BNAFLayer
from ..transforms.coupling import AffineCoupling, CouplingChain
from ..transforms.linear import LULinear, Permutation, Reverse
from ..transforms.normalization import BatchNorm
from ..transforms.splines import RQSplineAutoregressive, RQSplineCoupling
from ..transforms.splines_polynomial import (
    CubicSplineAutoregressive,
    CubicSplineCoupling,
    LinearSplineAutoregressive,
    LinearSplineCoupling,
    QuadraticSplineAutoregressive,
    QuadraticSplineCoupling,
)
from ..validation import check_sizes

__all__ = ["BNAF", "IAF", "MAF", "NSF", "NSFAutoregressive"]


def _mixer(kind: str, features: int, seed: int) -> Bijection | None:
    """The fixed map put between autoregressive layers so every feature gets conditioned on the others
    (``"none"``: nothing, for coupling layers whose fixed half already alternates)."""
    if kind == "none":
        return None
    if kind == "reverse":
        return Reverse(features)
    if kind == "random":
        return Permutation(features, seed=seed)
    if kind == "lu":
        return LULinear(features, seed=seed)
    raise ValueError(f"unknown permutation {kind!r}: use 'reverse', 'random', 'lu' or 'none'")


#: the spline kernels of NSF and NSFAutoregressive: name -> (coupling layer, autoregressive layer)
SPLINES: dict[str, tuple[type, type]] = {
    "rational-quadratic": (RQSplineCoupling, RQSplineAutoregressive),
    "linear": (LinearSplineCoupling, LinearSplineAutoregressive),
    "quadratic": (QuadraticSplineCoupling, QuadraticSplineAutoregressive),
    "cubic": (CubicSplineCoupling, CubicSplineAutoregressive),
}


def _spline_layers(spline: str) -> tuple[type, type]:
    if spline not in SPLINES:
        raise ValueError(f"unknown spline {spline!r}: use one of {', '.join(map(repr, SPLINES))}")
    return SPLINES[spline]


def _flow(make_layers: Callable[[int], list[nn.Module]], features: int, context: int, conditional_base: bool,
          embedding: Sequence[int] | nn.Module | None, standardize_context: bool,
          compose: type[Compose] = Compose) -> Flow:
    """The flow of the layers ``make_layers(e)`` built for ``e`` context features: the context's own number, or
    the embedding network's output size (the layers and a conditional base see the embedded context)."""
    if conditional_base and not context:
        raise ValueError("conditional_base=True needs context > 0")
    net, embedded = context_embedding(context, embedding)
    base = ConditionalDiagNormal(features, embedded) if conditional_base else StandardNormal(features)
    return Flow(compose(*make_layers(embedded)), base, context=context, embedding=net,
                standardize_context=standardize_context)


def _stack(make: Callable[[int], nn.Module], features: int, depth: int, permutation: str,
           batch_norm: bool = False) -> list[nn.Module]:
    """``make(i)`` for ``i < depth`` with a mixer (and optionally batch norm) between consecutive layers."""
    layers: list[nn.Module] = []
    for i in range(depth):
        if i:
            if batch_norm:
                layers.append(BatchNorm(features))
            mixer = _mixer(permutation, features, seed=i)
            if mixer is not None:
                layers.append(mixer)
        layers.append(make(i))
    return layers


def _made_stack(make: Callable[[int, str], nn.Module], features: int, depth: int, permutation: str,
                batch_norm: bool = False) -> list[nn.Module]:
    """Autoregressive layers ``make(i, order)``. ``permutation="reverse"`` alternates the MADE's order (natural,
    reversed, ...) instead of flipping the features between layers: the same flow family without a copy of
    x per layer; the other mixers go between the layers, each MADE in natural order."""
    if permutation == "reverse":
        return _stack(lambda i: make(i, "reversed" if i % 2 else "natural"), features, depth, "none",
                      batch_norm)
    return _stack(lambda i: make(i, "natural"), features, depth, permutation, batch_norm)


def _made_flow(layer: Callable[[int, str], nn.Module], features: int, context: int, depth: int, permutation: str,
               conditional_base: bool, embedding: Sequence[int] | nn.Module | None, standardize_context: bool,
               batch_norm: bool = False) -> Flow:
    """The flow of ``depth`` autoregressive layers ``layer(e, order)`` (``e``: the context features the layers see,
    ``order``: the MADE's order), mixed as `_made_stack` does, on the base `_flow` chooses."""
    return _flow(lambda e: _made_stack(lambda i, order: layer(e, order), features, depth, permutation, batch_norm),
                 features, context, conditional_base, embedding, standardize_context)


@FLOWS.register("MAF", renamed={"transforms": "depth"}, test_kwargs={"depth": 2, "hidden": (16, 16)})
def MAF(features: int, context: int = 0, depth: int = 5, hidden: Sequence[int] = (64, 64),
        residual: bool = False, permutation: str = "reverse", batch_norm: bool = False,
        scale_bound: float | None = 3.0, conditional_base: bool = False,
        embedding: Sequence[int] | nn.Module | None = None, standardize_context: bool = True) -> Flow:
    """MAF (Papamakarios et al. 2017): affine autoregressive layers; one-pass density, D-pass sampling.

    ``depth`` masked affine autoregressive layers, their MADE orders alternating (``permutation="reverse"``)
    or with a ``"random"`` permutation or ``"lu"`` linear map between them, optionally with batch norm too.
    Each layer maps data -> latent by ``z_i = x_i exp(-s_i) + t_i`` with ``(t_i, s_i)`` from a MADE on ``x_<i``,
    ``log|det dz/dx| = -sum_i s_i``, and ``log p(x) = log N(T(x); 0, I) + sum over layers of log|det|``.
    ``log_prob`` is one MADE pass per layer; ``sample`` takes D passes per layer.

    Args:
        features: Number of features ``D``.
        context: Number of context features (0: unconditional).
        depth: Number of autoregressive layers.
        hidden: Hidden layer sizes of each MADE.
        residual: Make each entry of ``hidden`` a residual block of the MADE (all widths equal).
        permutation: What mixes the features between layers: ``"reverse"`` (alternate the MADE orders),
            ``"random"`` (a fixed random permutation), ``"lu"`` (a learned
            `LULinear`) or ``"none"``.
        batch_norm: Put a `BatchNorm` between consecutive layers.
        scale_bound: Smooth bound of every log-scale; ``None``: unbounded.
        conditional_base: Draw the base from a `ConditionalDiagNormal` on the
            context instead of N(0, I) (needs ``context > 0``).
        embedding: A context embedding network trained with the flow: layer widths such as ``[64, 16]`` or
            any ``nn.Module`` mapping ``(batch, context)`` to ``(batch, e)``; ``None``: the raw context (see `Flow`).
        standardize_context: Standardise the context inside the flow with statistics fitted at `exactflow.fit`
            (see `Flow.fit_context`).

    Returns:
        The flow, a `Flow` on N(0, I) (or the conditional base); ``flow.spec`` records the call.

    References:
        G. Papamakarios, T. Pavlakou, I. Murray. Masked Autoregressive Flow for Density Estimation (2017).
        https://arxiv.org/abs/1705.07057

    Examples:
        >>> flow = MAF(3, context=2, depth=2, hidden=(8, 8))
        >>> x, c = torch.randn(5, 3), torch.randn(5, 2)
        >>> flow.log_prob(x, c).shape
        torch.Size([5])
        >>> flow.sample(4, c[0]).shape
        torch.Size([4, 3])
        >>> torch.allclose(flow.from_latent(flow.to_latent(x, c), c), x, atol=1e-5)
        True
    """
    check_sizes(features, context, hidden, depth=depth)
    return _made_flow(lambda e, order: MaskedAffineAutoregressive(features, e, hidden, order, residual,
                                                                  scale_bound=scale_bound),
                      features, context, depth, permutation, conditional_base, embedding, standardize_context,
                      batch_norm)


@FLOWS.register("IAF", renamed={"transforms": "depth"}, test_kwargs={"depth": 2, "hidden": (16, 16)})
def IAF(features: int, context: int = 0, depth: int = 5, hidden: Sequence[int] = (64, 64),
        residual: bool = False, permutation: str = "reverse", scale_bound: float | None = 3.0,
        conditional_base: bool = False,
        embedding: Sequence[int] | nn.Module | None = None, standardize_context: bool = True) -> Flow:
    """IAF (Kingma et al. 2016): inverted MAF layers; the flow for fast sampling and variational posteriors.

    Each layer maps latent -> data by ``x_i = z_i exp(-s_i) + t_i`` with ``(t_i, s_i)`` from a MADE on ``z_<i``
    (``log|det dx/dz| = -sum_i s_i``); data -> latent inverts it feature by feature.
    ``sample``/``rsample`` and ``sample_and_log_prob`` take one MADE pass per layer, so a variational
    posterior q(x | context) trains by reverse KL on ``sample_and_log_prob``. ``log_prob`` of given data takes
    D passes per layer.

    ``features``, ``context``, ``depth``, ``hidden``, ``residual``, ``permutation``, ``scale_bound``,
    ``conditional_base``, ``embedding`` and ``standardize_context`` are as in `MAF`.

    Returns:
        The flow, a `Flow` on N(0, I) (or the conditional base); ``flow.spec`` records the call.

    References:
        D. P. Kingma, T. Salimans, R. Jozefowicz, X. Chen, I. Sutskever, M. Welling. Improved Variational
        Inference with Inverse Autoregressive Flow (2016). https://arxiv.org/abs/1606.04934

    Examples:
        >>> flow = IAF(3, depth=2, hidden=(8, 8))
        >>> x, log_q = flow.sample_and_log_prob(6)  # one MADE pass per layer
        >>> x.shape, log_q.shape
        (torch.Size([6, 3]), torch.Size([6]))
        >>> torch.allclose(flow.log_prob(x), log_q, atol=1e-4)  # the same density, D passes per layer
        True
    """
    check_sizes(features, context, hidden, depth=depth)
    return _made_flow(lambda e, order: Inverse(MaskedAffineAutoregressive(features, e, hidden, order, residual,
                                                                          scale_bound=scale_bound)),
                      features, context, depth, permutation, conditional_base, embedding, standardize_context)


@FLOWS.register("NSF", renamed={"transforms": "depth"}, test_kwargs={"depth": 2, "hidden": (16,), "bins": 4})
def NSF(features: int, context: int = 0, depth: int = 3, hidden: Sequence[int] = (64, 64), bins: int = 8,
        bound: float = 5.0, mask: str = "half", permutation: str = "lu", conditional_base: bool = False,
        embedding: Sequence[int] | nn.Module | None = None, standardize_context: bool = True,
        spline: str = "rational-quadratic", affine: str = "none") -> Flow:
    """Neural spline flow, coupling form (Durkan et al. 2019): one pass both ways.

    ``depth`` rational-quadratic spline couplings (``bins`` bins on ``[-bound, bound]``, identity tails; or the
    ``spline`` kernel chosen),
    the fixed half flipping every layer, with a ``permutation`` (default an LU-parametrised linear map, as in
    the paper) between them, or none (``permutation="none"``). Each coupling maps data -> latent by
    ``z_tr = f(x_tr; net(x_id))``, ``z_id = x_id`` with ``f`` a monotone rational-quadratic spline per feature,
    ``log|det dz/dx| = sum log f'(x_tr)``.

    ``conditional_base``, ``embedding`` and ``standardize_context`` are as in `MAF`.

    Args:
        features: Number of features ``D``.
        context: Number of context features (0: unconditional).
        depth: Number of spline couplings.
        hidden: Hidden layer sizes of each coupling's MLP.
        bins: Number of spline bins.
        bound: Half-width ``B`` of the interval ``[-B, B]`` the splines cover (identity tails outside).
        mask: Which features a coupling keeps fixed: ``"half"`` or ``"alternating"`` (flipped every layer).
        permutation: What mixes the features between layers: ``"reverse"`` (reverse their order),
            ``"random"`` (a fixed random permutation), ``"lu"`` (a learned
            `LULinear`) or ``"none"``.
        spline: The spline of every coupling: ``"rational-quadratic"`` (`RQSplineCoupling`), ``"linear"``,
            ``"quadratic"`` (Müller et al. 2019) or ``"cubic"`` (Durkan et al. 2019, cubic-spline flows; inverse
            by bisection), see `exactflow.transforms.splines_polynomial`.
        affine: Affine couplings (`AffineCoupling`, same ``hidden``, log-scales bounded by 3) added to the splines,
            whose tails are the identity: ``"none"``; ``"ends"``: two (both halves) on the data side, before the
            first spline; ``"interleaved"``: one before every spline coupling, on the same half. Their scale and
            shift act on the whole line, tails included (a scale that depends on the other features, as in a funnel).

    Returns:
        The flow, a `Flow` on N(0, I) (or the conditional base); ``flow.spec`` records the call.

    References:
        C. Durkan, A. Bekasov, I. Murray, G. Papamakarios. Neural Spline Flows (2019).
        https://arxiv.org/abs/1906.04032

    Examples:
        >>> flow = NSF(4, depth=2, hidden=(8,), bins=4)
        >>> x = torch.randn(5, 4)
        >>> flow.log_prob(x).shape, flow.sample(3).shape
        (torch.Size([5]), torch.Size([3, 4]))
        >>> torch.allclose(flow.from_latent(flow.to_latent(x)), x, atol=1e-5)
        True
    """
    check_sizes(features, context, hidden, depth=depth, bins=bins)
    if affine not in ("none", "ends", "interleaved"):
        raise ValueError(f"unknown affine {affine!r}: use 'none', 'ends' or 'interleaved'")
    coupling = _spline_layers(spline)[0]

    def layers(e: int) -> list[nn.Module]:
        def affine_layer(flip: bool) -> nn.Module:
            return AffineCoupling(features, e, mask=mask, flip=flip, hidden=hidden)

        def spline_layer(i: int) -> list[nn.Module]:
            layer = coupling(features, e, mask=mask, flip=i % 2 == 1, hidden=hidden, bins=bins, bound=bound)
            return [affine_layer(i % 2 == 1), layer] if affine == "interleaved" else [layer]

        out = [affine_layer(False), affine_layer(True)] if affine == "ends" else []
        for step in _stack(spline_layer, features, depth, permutation):
            out.extend(step if isinstance(step, list) else [step])
        return out

    return _flow(layers, features, context, conditional_base, embedding, standardize_context, CouplingChain)


@FLOWS.register("NSFAutoregressive", renamed={"transforms": "depth"},
                test_kwargs={"depth": 2, "hidden": (16, 16), "bins": 4})
def NSFAutoregressive(features: int, context: int = 0, depth: int = 3, hidden: Sequence[int] = (64, 64),
                      bins: int = 8, bound: float = 5.0, residual: bool = False, permutation: str = "reverse",
                      conditional_base: bool = False,
                      embedding: Sequence[int] | nn.Module | None = None, standardize_context: bool = True,
                      spline: str = "rational-quadratic") -> Flow:
    """Neural spline flow, autoregressive form (Durkan et al. 2019): one-pass density, D-pass sampling.

    ``depth`` rational-quadratic (or ``spline``) spline layers conditioned by MADEs, their orders alternating
    (``permutation="reverse"``) or with a ``"random"`` permutation or ``"lu"`` map between them. Each layer maps
    data -> latent by ``z_i = f(x_i; theta_i(x_<i))``, ``log|det dz/dx| = sum_i log f'(x_i)``.

    ``features``, ``context``, ``hidden``, ``residual``, ``permutation``, ``conditional_base``, ``embedding`` and
    ``standardize_context`` are as in `MAF`.

    Args:
        depth: Number of autoregressive spline layers.
        bins: Number of spline bins.
        bound: Half-width ``B`` of the interval ``[-B, B]`` the splines cover (identity tails outside).
        spline: The spline of every layer: ``"rational-quadratic"`` (`RQSplineAutoregressive`), ``"linear"``,
            ``"quadratic"`` or ``"cubic"``, see `exactflow.transforms.splines_polynomial`.

    Returns:
        The flow, a `Flow` on N(0, I) (or the conditional base); ``flow.spec`` records the call.

    References:
        C. Durkan, A. Bekasov, I. Murray, G. Papamakarios. Neural Spline Flows (2019).
        https://arxiv.org/abs/1906.04032

    Examples:
        >>> flow = NSFAutoregressive(3, depth=2, hidden=(8, 8), bins=4)
        >>> x = torch.randn(5, 3)
        >>> flow.log_prob(x).shape, flow.sample(2).shape
        (torch.Size([5]), torch.Size([2, 3]))
    """
    check_sizes(features, context, hidden, depth=depth, bins=bins)
    autoregressive = _spline_layers(spline)[1]
    return _made_flow(lambda e, order: autoregressive(features, e, hidden, bins=bins, bound=bound, order=order,
                                                      residual=residual),
                      features, context, depth, permutation, conditional_base, embedding, standardize_context)


@FLOWS.register("BNAF", renamed={"transforms": "depth"}, tolerance=1e-6,
                test_kwargs={"features": 3, "depth": 2, "hidden": (3,)})
def BNAF(features: int, context: int = 0, depth: int = 2, hidden: Sequence[int] = (16, 16),
         permutation: str = "reverse", conditional_base: bool = False,
        embedding: Sequence[int] | nn.Module | None = None, standardize_context: bool = True) -> Flow:
    """BNAF (De Cao et al. 2020): block neural autoregressive layers; exact density, slow sampling (bisection).

    ``depth`` layers (``hidden`` units per feature in each hidden layer) with a ``permutation`` between
    them. ``log_prob`` is one pass per layer; ``sample`` inverts every layer by bisection, about D * 60
    passes per layer. Each layer maps data -> latent by a monotone network per feature, ``z_i = f_i(x_<=i)``,
    with the exact ``log|det dz/dx| = sum_i log dz_i/dx_i``.

    ``conditional_base``, ``embedding`` and ``standardize_context`` are as in `MAF`.

    Args:
        features: Number of features ``D``.
        context: Number of context features (0: unconditional).
        depth: Number of BNAF layers.
        hidden: Units per feature in each hidden layer of every BNAF layer.
        permutation: What mixes the features between layers: ``"reverse"`` (reverse their order),
            ``"random"`` (a fixed random permutation), ``"lu"`` (a learned
            `LULinear`) or ``"none"``.

    Returns:
        The flow, a `Flow` on N(0, I) (or the conditional base); ``flow.spec`` records the call.

    References:
        N. De Cao, I. Titov, W. Aziz. Block Neural Autoregressive Flow (UAI 2019).
        https://arxiv.org/abs/1904.04676

    Examples:
        >>> flow = BNAF(2, depth=2, hidden=(4,))
        >>> x = torch.randn(3, 2)
        >>> flow.log_prob(x).shape
        torch.Size([3])
        >>> torch.allclose(flow.from_latent(flow.to_latent(x)), x, atol=1e-4)  # bisection inverse
        True
    """
    check_sizes(features, context, hidden, depth=depth)
    return _flow(lambda e: _stack(lambda i: BNAFLayer(features, e, hidden), features, depth, permutation),
                 features, context, conditional_base, embedding, standardize_context)
