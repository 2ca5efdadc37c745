"""exactflow: normalizing flows on PyTorch with exact, verified log-likelihoods.

Convention: a bijection's ``forward`` maps data -> latent and returns ``(z, log|det dz/dx|)``;
``Flow.log_prob(x) = log p_z(T(x)) + log|det dT/dx|``.
"""

from . import bases, data, flows, objectives, targets, testing, transforms
from .bases import ConditionalGaussianMixture, GaussianMixture, ResampledBase
from .checkpoint import load, save
from .core import Bijection, Compose, Inverse
from .distributions import DiagNormal, Flow, StandardNormal
from .distributions import compile_flow as compile
from .explore import explore
from .flows import build
from .training import History, evaluate, fit, standardize
from .vi import fit_reverse_kl

__version__ = "0.1.0"

__all__ = ["Bijection", "Compose", "Inverse", "Flow", "StandardNormal", "DiagNormal", "GaussianMixture",
           "ConditionalGaussianMixture", "ResampledBase", "bases", "compile", "data", "flows",
           "objectives", "transforms", "targets", "testing", "build", "save", "load", "fit", "evaluate", "standardize",
           "History", "fit_reverse_kl", "explore", "__version__"]
