"""The same four flows built in exactflow, zuko, nflows and normflows.

Sizes (the issue's definition of "equivalent"):

- ``realnvp``: 8 affine couplings, conditioner MLP 2x64 (ReLU), the fixed half alternating.
- ``maf``: 5 masked affine autoregressive transforms, MADE 2x64, order reversed between them.
- ``nsf-ar``: 5 autoregressive rational-quadratic splines, 8 bins on [-5, 5] (linear tails), MADE 2x64.
- ``nsf-cp``: 5 coupling rational-quadratic splines, 8 bins on [-5, 5], MLP 2x64, halves alternating.

Every builder returns a :class:`Model` with the same three calls, so the timer treats the
libraries alike; :func:`parameter_count` shows the networks have the same size.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

FLOWS = ("realnvp", "maf", "nsf-ar", "nsf-cp")
LIBRARIES = ("exactflow", "zuko", "nflows", "normflows")
COMPILED = "exactflow+compile"  # exactflow after ``exactflow.compile`` (opt-in column: compiling takes seconds per row)
HIDDEN = (64, 64)
BINS = 8
BOUND = 5.0
# the MADE and spline options of nflows' layers (normflows wraps the same layers)
NFLOWS_MADE = {"hidden_features": HIDDEN[0], "num_blocks": len(HIDDEN) - 1, "use_residual_blocks": False}
NFLOWS_SPLINE = {"num_bins": BINS, "tails": "linear", "tail_bound": BOUND}


@dataclass
class Model:
    """One library's flow: ``log_prob(x) -> (batch,)`` and ``sample(n) -> (n, d)``."""

    library: str
    module: nn.Module
    log_prob: Callable[[Tensor], Tensor]
    sample: Callable[[int], Tensor]


def available(library: str) -> bool:
    return importlib.util.find_spec(library.split("+")[0]) is not None


def parameter_count(model: Model) -> int:
    return sum(p.numel() for p in model.module.parameters())


def _half(features: int, i: int) -> Tensor:
    """True on the half that stays fixed in coupling layer ``i``: the first ceil(D/2) features, then the rest."""
    first = torch.arange(features) < (features + 1) // 2
    return first if i % 2 == 0 else ~first


# exactflow -----------------------------------------------------------------------------------

def _exactflow(flow: str, features: int) -> Model:
    from exactflow.flows import registry

    if flow == "realnvp":
        f = registry["RealNVP"](features=features, depth=8, hidden=HIDDEN, mask="half")
    elif flow == "maf":
        f = registry["MAF"](features=features, depth=5, hidden=HIDDEN)
    elif flow == "nsf-ar":
        f = registry["NSFAutoregressive"](features=features, depth=5, hidden=HIDDEN, bins=BINS, bound=BOUND)
    else:  # the fixed half alternates, no permutation in between (as in the peers)
        f = registry["NSF"](features=features, depth=5, hidden=HIDDEN, bins=BINS, bound=BOUND, mask="half",
                            permutation="none")
    return Model("exactflow", f, f.log_prob, f.sample)


# zuko ----------------------------------------------------------------------------------------

def _zuko(flow: str, features: int) -> Model:
    import zuko
    from zuko.flows.coupling import GeneralCouplingTransform
    from zuko.transforms import MonotonicRQSTransform

    if flow == "maf":
        f = zuko.flows.MAF(features, transforms=5, hidden_features=HIDDEN)
    elif flow == "nsf-ar":
        f = zuko.flows.NSF(features, bins=BINS, transforms=5, hidden_features=HIDDEN)
    else:
        if flow == "realnvp":
            layers, extra = 8, {}
        else:
            layers = 5
            extra = {"univariate": MonotonicRQSTransform, "shapes": [(BINS,), (BINS,), (BINS - 1,)]}
        transforms = [GeneralCouplingTransform(features, mask=_half(features, i), hidden_features=HIDDEN, **extra)
                      for i in range(layers)]
        base = zuko.flows.UnconditionalDistribution(
            zuko.distributions.DiagNormal, torch.zeros(features), torch.ones(features), buffer=True)
        f = zuko.flows.Flow(transforms, base)
    return Model("zuko", f, lambda x: f().log_prob(x), lambda n: f().sample((n,)))


# nflows --------------------------------------------------------------------------------------

class _NflowsNet(nn.Module):
    """nflows' own MLP, taking the ``context`` argument its coupling layers pass."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        from nflows.nn.nets import MLP

        self.mlp = MLP((in_features,), (out_features,), list(HIDDEN))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.mlp(x)


def _nflows(flow: str, features: int) -> Model:
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow
    from nflows.transforms import (
        AffineCouplingTransform,
        CompositeTransform,
        MaskedAffineAutoregressiveTransform,
        MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
        PiecewiseRationalQuadraticCouplingTransform,
        ReversePermutation,
    )

    made, spline = NFLOWS_MADE, NFLOWS_SPLINE
    layers: list[nn.Module] = []
    if flow in ("maf", "nsf-ar"):
        for i in range(5):
            if i:
                layers.append(ReversePermutation(features))
            if flow == "maf":
                layers.append(MaskedAffineAutoregressiveTransform(features, **made))
            else:
                layers.append(MaskedPiecewiseRationalQuadraticAutoregressiveTransform(features, **made, **spline))
    else:
        for i in range(8 if flow == "realnvp" else 5):
            transformed = (~_half(features, i)).int()  # nflows: mask > 0 marks the transformed features
            if flow == "realnvp":
                layers.append(AffineCouplingTransform(transformed, _NflowsNet))
            else:
                layers.append(PiecewiseRationalQuadraticCouplingTransform(transformed, _NflowsNet, **spline))
    f = Flow(CompositeTransform(layers), StandardNormal([features]))
    return Model("nflows", f, f.log_prob, f.sample)


# normflows -----------------------------------------------------------------------------------

def _normflows(flow: str, features: int) -> Model:
    import normflows as nf
    from normflows.flows.neural_spline.autoregressive import MaskedPiecewiseRationalQuadraticAutoregressive
    from normflows.flows.neural_spline.coupling import PiecewiseRationalQuadraticCoupling

    class DataToLatent(nf.flows.Flow):
        """normflows runs flows latent -> data; its nflows-derived layers map data -> latent, so swap
        the two directions (as normflows' own spline wrappers do)."""

        def __init__(self, layer: nn.Module):
            super().__init__()
            self.layer = layer

        def forward(self, z, context=None):
            x, ladj = self.layer.inverse(z, context)
            return x, ladj.view(-1)

        def inverse(self, x, context=None):
            z, ladj = self.layer(x, context)
            return z, ladj.view(-1)

    class Net(nn.Module):
        """normflows' own MLP, taking the ``context`` argument its coupling layers pass."""

        def __init__(self, in_features: int, out_features: int):
            super().__init__()
            self.mlp = nf.nets.MLP([in_features, *HIDDEN, out_features])

        def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
            return self.mlp(x)

    def reverse() -> nn.Module:
        p = nf.flows.Permute(features, mode="shuffle")
        p.perm.copy_(torch.arange(features - 1, -1, -1))
        p.inv_perm.copy_(p.perm)
        return p

    made, spline = NFLOWS_MADE, NFLOWS_SPLINE
    layers: list[nn.Module] = []
    if flow in ("maf", "nsf-ar"):
        for i in range(5):
            if i:
                layers.append(reverse())
            if flow == "maf":
                layers.append(DataToLatent(nf.flows.MaskedAffineAutoregressive(features, **made)))
            else:
                layers.append(DataToLatent(MaskedPiecewiseRationalQuadraticAutoregressive(features, **made, **spline)))
    elif flow == "realnvp":
        if features % 2:
            raise ValueError("normflows' channel split needs an even dimension")
        for i in range(8):
            if i:
                layers.append(nf.flows.Permute(features, mode="swap"))
            net = nf.nets.MLP([features // 2, *HIDDEN, features], init_zeros=True)
            layers.append(nf.flows.AffineCouplingBlock(net))
    else:
        for i in range(5):
            transformed = (~_half(features, i)).int()
            layers.append(DataToLatent(PiecewiseRationalQuadraticCoupling(transformed, Net, **spline)))
    # normflows lists flows from the base to the data; reverse so layer 0 touches the data, as elsewhere
    f = nf.NormalizingFlow(nf.distributions.DiagGaussian(features, trainable=False), layers[::-1])
    return Model("normflows", f, f.log_prob, lambda n: f.sample(n)[0])


def _exactflow_compiled(flow: str, features: int) -> Model:
    """exactflow's flow after ``exactflow.compile`` (inductor, fixed shapes)."""
    import exactflow

    # dynamo keeps one cache per code object and falls back to eager after 8 recompilations: every row's
    # new flow would count as one, so start each from a clean slate
    torch._dynamo.reset()
    model = _exactflow(flow, features)
    exactflow.compile(model.module, dynamic=False)
    return Model(COMPILED, model.module, model.log_prob, model.sample)


_BUILDERS = {"exactflow": _exactflow, "zuko": _zuko, "nflows": _nflows, "normflows": _normflows,
             COMPILED: _exactflow_compiled}


def build(library: str, flow: str, features: int, seed: int = 0, noise: float = 0.05) -> Model:
    """``flow`` in ``library`` on ``features`` dimensions, every parameter nudged by N(0, noise^2) so
    zero-initialised last layers do not make the transforms identities (the same for every library)."""
    if library not in _BUILDERS:
        raise ValueError(f"unknown library {library!r}: choose from {', '.join(_BUILDERS)}")
    if flow not in FLOWS:
        raise ValueError(f"unknown flow {flow!r}: choose from {', '.join(FLOWS)}")
    torch.manual_seed(seed)
    model = _BUILDERS[library](flow, features)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.module.parameters():
            p.add_(noise * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    model.module.eval()
    return model
