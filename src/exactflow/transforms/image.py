"""Image bijections on ``(batch, C, H, W)``: squeeze, invertible 1x1 convolutions, ActNorm per channel,
coupling layers with a CNN conditioner (checkerboard or channel masks), and the logit preprocessing.

A ``context`` of shape ``(batch, c)`` is broadcast over the pixels and enters the conditioner as
``c`` extra constant channels.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Bijection
from ..nets import ACTIVATIONS
from ..registry import TRANSFORMS
from ..utils import sum_except_batch
from .elementwise import bounded_log_scale
from .linear import lu_solve, lu_weight
from .normalization import ActNorm

__all__ = [
    "ConvNet",
    "ImageAdditiveCoupling",
    "ImageAffineCoupling",
    "ImageCoupling",
    "InvConv1x1",
    "InvConv1x1LU",
    "Logit",
    "Squeeze",
    "Unsqueeze",
    "append_context",
    "checkerboard_mask",
    "image_shape",
]


def image_shape(shape: tuple[int, ...] | list[int], factor: int = 1) -> tuple[int, int, int]:
    """``shape`` as ``(C, H, W)`` of positive ints, with H and W divisible by ``factor``; else ValueError."""
    try:
        shape = tuple(operator.index(s) for s in shape)
    except TypeError:
        raise ValueError(f"image shape must be (C, H, W) with positive ints, got {shape}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image shape must be (C, H, W) with positive ints, got {shape}")
    if shape[1] % factor or shape[2] % factor:
        raise ValueError(f"image shape {shape}: H and W must be divisible by {factor}")
    return shape  # type: ignore[return-value]


def checkerboard_mask(height: int, width: int, flip: bool = False) -> Tensor:
    """``(1, 1, H, W)`` float mask, 1 where ``(i + j)`` is even (odd with ``flip``): the pixels that pass unchanged."""
    i, j = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    m = (i + j) % 2 == (1 if flip else 0)
    return m.to(torch.get_default_dtype()).view(1, 1, height, width)


def _mix_channels(weight: Tensor, x: Tensor) -> Tensor:
    """``weight @ x`` at every pixel: a 1x1 convolution as one batched matmul (cheaper than ``conv2d`` here)."""
    b, c, h, w = x.shape
    return torch.matmul(weight, x.reshape(b, c, h * w)).reshape(b, weight.shape[0], h, w)


def append_context(h: Tensor, context: Tensor | None) -> Tensor:
    """Append a ``(B, c)`` context to ``(B, C, H, W)`` as ``c`` constant channels."""
    if context is None:
        return h
    c = context.to(h.dtype)[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])
    return torch.cat([h, c], dim=1)


class ConvNet(nn.Sequential):
    """Glow's conditioner: conv 3x3 -> act -> conv 1x1 -> act -> conv 3x3 ('same' padding). ``hidden`` is the
    width of both hidden layers (an int) or the widths ``(h1, ..., hk)`` (conv 3x3 to h1, 1x1 convs between
    the others). The last conv is zero-initialised (``zero_last``) so the layer built on it starts as the identity.

    Args:
        in_channels: Input channels (the fixed part plus the context channels).
        out_channels: Output channels (the parameters of the elementwise map).
        hidden: Width of both hidden layers (an int) or the widths of all hidden layers.
        activation: Activation: ``"relu"``, ``"tanh"``, ``"silu"``, ``"elu"`` or ``"gelu"``.
        zero_last: Zero-initialise the last convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int | Sequence[int] = 64, activation: str = "relu",
                 zero_last: bool = True) -> None:
        widths = (hidden, hidden) if isinstance(hidden, int) else tuple(hidden)
        if not widths or not all(isinstance(h, int) and h > 0 for h in widths):
            raise ValueError(f"hidden must be a positive int or a sequence of them, got {hidden!r}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1), ACTIVATIONS[activation]()]
        for a, b in itertools.pairwise(widths):
            layers += [nn.Conv2d(a, b, 1), ACTIVATIONS[activation]()]
        last = nn.Conv2d(widths[-1], out_channels, 3, padding=1)
        if zero_last:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        super().__init__(*layers, last)


class Squeeze(Bijection):
    """Space to depth: ``(C, H, W) -> (C f^2, H/f, W/f)``; output channel ``c f^2 + a f + b`` holds pixel
    ``(f i + a, f j + b)`` of input channel ``c`` (``torch.pixel_unshuffle``). A permutation: log|det| = 0.

    Data -> latent is space to depth, latent -> data depth to space (``torch.pixel_shuffle``).

    Args:
        factor: The squeeze factor ``f``; ``H`` and ``W`` of the input must be divisible by it.

    References:
        L. Dinh, J. Sohl-Dickstein, S. Bengio. Density estimation using Real NVP (2017).
        https://arxiv.org/abs/1605.08803

    Examples:
        >>> z, ladj = Squeeze(2)(torch.randn(3, 1, 4, 4))
        >>> z.shape, ladj.shape
        (torch.Size([3, 4, 2, 2]), torch.Size([3]))
    """

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        if factor < 1:
            raise ValueError(f"squeeze factor must be a positive int, got {factor}")
        self.factor = factor

    def _check(self, x: Tensor, factor: int) -> None:
        if x.dim() != 4 or x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"{type(self).__name__} needs (B, C, H, W) with H, W divisible by {factor}, "
                             f"got {tuple(x.shape)}")

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x, self.factor)
        f = self.factor
        if x.shape[0] == 0:  # torch's pixel_unshuffle returns an empty batch with its input's shape
            return x.new_empty(0, x.shape[1] * f * f, x.shape[2] // f, x.shape[3] // f), x.new_zeros(0)
        return F.pixel_unshuffle(x, f), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        f = self.factor
        if z.dim() != 4 or z.shape[1] % f**2:
            raise ValueError(f"{type(self).__name__}.inverse needs (B, C, H, W) with C divisible by "
                             f"{f ** 2}, got {tuple(z.shape)}")
        if z.shape[0] == 0:  # as in forward: pixel_shuffle keeps an empty batch's shape
            return z.new_empty(0, z.shape[1] // (f * f), z.shape[2] * f, z.shape[3] * f), z.new_zeros(0)
        return F.pixel_shuffle(z, f), z.new_zeros(z.shape[0])


class Unsqueeze(Bijection):
    """Depth to space, the inverse of `Squeeze`: ``(C f^2, H, W) -> (C, H f, W f)``; log|det| = 0.

    Args:
        factor: The factor ``f``; the input's channels must be divisible by ``f**2``.

    Examples:
        >>> x = torch.randn(3, 4, 2, 2)
        >>> torch.equal(Unsqueeze(2)(x)[0], Squeeze(2).inverse(x)[0])
        True
    """

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        self.squeeze = Squeeze(factor)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.squeeze.inverse(x, context)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.squeeze.forward(z, context)


@TRANSFORMS.register("Squeeze", input="image", conditional=False, test_kwargs={"shape": (1, 8, 8)})
def squeeze(shape: tuple[int, int, int], context: int = 0, factor: int = 2) -> Squeeze:
    """Space to depth: ``(C, H, W) -> (C f^2, H/f, W/f)``, a permutation of the values; volume preserving.

    Data -> latent: output channel ``c f^2 + a f + b`` at ``(i, j)`` holds input pixel ``(f i + a, f j + b)`` of
    channel ``c`` (see `Squeeze`); latent -> data is depth to space. ``log|det dz/dx| = 0``.

    Args:
        shape: Event shape ``(C, H, W)`` of the input; ``H`` and ``W`` divisible by ``factor``.
        context: Must be 0 (unconditional); accepted for the registry's common signature.
        factor: The squeeze factor ``f``.

    Returns:
        The layer, a `Squeeze`.

    References:
        L. Dinh, J. Sohl-Dickstein, S. Bengio. Density estimation using Real NVP (2017).
        https://arxiv.org/abs/1605.08803

    Examples:
        >>> layer = squeeze((1, 4, 4))
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> z, ladj = layer(x)
        >>> z.shape, ladj
        (torch.Size([1, 4, 2, 2]), tensor([0.]))
        >>> z[0, :, 0, 0]  # the top-left 2x2 block of pixels, now four channels
        tensor([0., 1., 4., 5.])
        >>> torch.equal(layer.inverse(z)[0], x)
        True
    """
    image_shape(shape, factor)
    return Squeeze(factor)


@TRANSFORMS.register("Unsqueeze", input="image", conditional=False)
def unsqueeze(shape: tuple[int, int, int], context: int = 0, factor: int = 2) -> Unsqueeze:
    """Depth to space: ``(C f^2, H, W) -> (C, H f, W f)``, the inverse of `squeeze`; volume preserving.

    Data -> latent is depth to space, latent -> data space to depth; ``log|det dz/dx| = 0``.

    Args:
        shape: Event shape ``(C, H, W)`` of the input; ``C`` divisible by ``factor**2``.
        context: Must be 0 (unconditional); accepted for the registry's common signature.
        factor: The factor ``f``.

    Returns:
        The layer, an `Unsqueeze`.

    References:
        L. Dinh, J. Sohl-Dickstein, S. Bengio. Density estimation using Real NVP (2017).
        https://arxiv.org/abs/1605.08803

    Examples:
        >>> layer = unsqueeze((4, 2, 2))
        >>> x = torch.randn(3, 4, 2, 2)
        >>> z, ladj = layer(x)
        >>> z.shape, ladj.shape
        (torch.Size([3, 1, 4, 4]), torch.Size([3]))
        >>> torch.equal(layer.inverse(z)[0], x)
        True
    """
    if image_shape(shape)[0] % factor**2:
        raise ValueError(f"Unsqueeze needs channels divisible by {factor ** 2}, got shape {tuple(shape)}")
    return Unsqueeze(factor)


def _random_rotation(channels: int, seed: int | None) -> Tensor:
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    q, r = torch.linalg.qr(torch.randn(channels, channels, generator=gen))
    return q * torch.sign(torch.diagonal(r))


@TRANSFORMS.register("InvConv1x1", input="image", conditional=False)
class InvConv1x1(Bijection):
    """Invertible 1x1 convolution (Kingma & Dhariwal 2018): one learned channel-mixing matrix at every pixel.

    Data -> latent: ``z[:, :, i, j] = W x[:, :, i, j]``, ``log|det dz/dx| = H W log|det W|``; latent -> data
    applies ``W^-1``, with the negated log-det. The log-det uses ``slogdet`` (O(C^3)); ``W`` starts as a random
    rotation.

    Args:
        shape: Event shape ``(C, H, W)``.
        context: Must be 0 (unconditional); accepted for the registry's common signature.
        seed: Seed of the initial random rotation (``None``: torch's global generator).

    References:
        D. P. Kingma, P. Dhariwal. Glow: Generative Flow with Invertible 1x1 Convolutions (2018).
        https://arxiv.org/abs/1807.03039

    Examples:
        >>> layer = InvConv1x1((3, 4, 4), seed=0)
        >>> x = torch.randn(2, 3, 4, 4)
        >>> z, ladj = layer(x)
        >>> z.shape, torch.allclose(ladj, torch.zeros(2), atol=1e-5)  # a rotation: |det W| = 1
        (torch.Size([2, 3, 4, 4]), True)
        >>> torch.allclose(layer.inverse(z)[0], x, atol=1e-5)
        True
    """

    def __init__(self, shape: tuple[int, int, int], context: int = 0, seed: int | None = None) -> None:
        super().__init__()
        channels = image_shape(shape)[0]
        self.weight = nn.Parameter(_random_rotation(channels, seed))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        ladj = x.shape[2] * x.shape[3] * torch.linalg.slogdet(self.weight)[1]
        return _mix_channels(self.weight, x), ladj.expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        ladj = z.shape[2] * z.shape[3] * torch.linalg.slogdet(self.weight)[1]
        w_inv = torch.linalg.inv(self.weight)
        return _mix_channels(w_inv, z), (-ladj).expand(z.shape[0])


@TRANSFORMS.register("InvConv1x1LU", input="image", conditional=False)
class InvConv1x1LU(Bijection):
    """Invertible 1x1 convolution in LU form, W = P L U S; log|det| = H W sum(log_diag), in O(C).

    Data -> latent: ``z[:, :, i, j] = W x[:, :, i, j]`` at every pixel, ``log|det dz/dx| = H W sum(log_diag)``;
    latent -> data applies ``W^-1`` (two triangular solves), with the negated log-det.
    ``P`` is a fixed permutation, ``L`` unit lower-triangular, ``U`` upper-triangular with diagonal
    ``exp(log_diag)``, ``S`` a fixed diagonal of signs. Starts as a random rotation (its LU factors).

    Args:
        shape: Event shape ``(C, H, W)``.
        context: Must be 0 (unconditional); accepted for the registry's common signature.
        seed: Seed of the initial random rotation (``None``: torch's global generator).

    References:
        D. P. Kingma, P. Dhariwal. Glow: Generative Flow with Invertible 1x1 Convolutions (2018).
        https://arxiv.org/abs/1807.03039

    Examples:
        >>> layer = InvConv1x1LU((3, 4, 4), seed=0)
        >>> with torch.no_grad():
        ...     _ = layer.log_diag.add_(0.5)
        >>> x = torch.randn(2, 3, 4, 4)
        >>> z, ladj = layer(x)
        >>> torch.allclose(ladj, 16 * torch.linalg.slogdet(layer.weight())[1].expand(2), atol=1e-4)
        True
        >>> torch.allclose(layer.inverse(z)[0], x, atol=1e-5)
        True
    """

    def __init__(self, shape: tuple[int, int, int], context: int = 0, seed: int | None = None) -> None:
        super().__init__()
        channels = image_shape(shape)[0]
        p, lower, u = torch.linalg.lu(_random_rotation(channels, seed))
        d = torch.diagonal(u)
        self.register_buffer("perm", p.argmax(0))
        self.register_buffer("sign", torch.sign(d))
        self.lower = nn.Parameter(torch.tril(lower, -1))
        self.upper = nn.Parameter(torch.triu(u * torch.sign(d), 1))
        self.log_diag = nn.Parameter(torch.log(d.abs()))

    def weight(self) -> Tensor:
        """``W = P L U S``, shape ``(C, C)``."""
        return lu_weight(self.perm, self.lower, self.upper, self.log_diag) * self.sign

    def inverse_weight(self) -> Tensor:
        """``W^-1 = S U^-1 L^-1 P^T`` by two triangular solves against the identity."""
        eye = torch.eye(self.lower.shape[0], dtype=self.lower.dtype, device=self.lower.device)
        return lu_solve(self.perm, self.lower, self.upper, self.log_diag, eye) * self.sign[:, None]

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        ladj = x.shape[2] * x.shape[3] * self.log_diag.sum()
        return _mix_channels(self.weight(), x), ladj.expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        ladj = z.shape[2] * z.shape[3] * self.log_diag.sum()
        return _mix_channels(self.inverse_weight(), z), (-ladj).expand(z.shape[0])


@TRANSFORMS.register("ActNorm2d", input="image", conditional=False)
def actnorm2d(shape: tuple[int, int, int], context: int = 0) -> ActNorm:
    """ActNorm per channel on images ``(C, H, W)``, with data-dependent initialisation (Glow).

    Data -> latent: ``z[:, c] = (x[:, c] - loc_c) exp(-log_scale_c)``, ``log|det dz/dx| = -H W sum_c log_scale_c``;
    the first forward call in training mode sets ``loc`` and ``log_scale`` from that batch (see `ActNorm`).

    Args:
        shape: Event shape ``(C, H, W)``.
        context: Must be 0 (unconditional); accepted for the registry's common signature.

    Returns:
        The layer, an `ActNorm` on ``C`` channels.

    References:
        D. P. Kingma, P. Dhariwal. Glow: Generative Flow with Invertible 1x1 Convolutions (2018).
        https://arxiv.org/abs/1807.03039

    Examples:
        >>> layer = actnorm2d((3, 4, 4))
        >>> x = 2 + 3 * torch.randn(8, 3, 4, 4)
        >>> z, ladj = layer(x)
        >>> torch.allclose(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-5), ladj.shape
        (True, torch.Size([8]))
        >>> torch.allclose(layer.inverse(z)[0], x, atol=1e-5)
        True
    """
    if context:
        raise ValueError("ActNorm2d is unconditional: context must be 0")
    return ActNorm(image_shape(shape)[0])


class ImageCoupling(Bijection):
    """Coupling on images: a mask splits x into a fixed part x_id and a transformed part x_tr; a
    `ConvNet` on ``(x_id, context)`` gives the parameters of an elementwise map of x_tr.

    ``mask="channel"``: x_id is the first ``C // 2`` channels (the rest with ``flip``); the net sees
    x_id only. ``mask="checkerboard"``: x_id is the pixels with ``i + j`` even (odd with ``flip``) in
    every channel; the net sees ``x * mask``. Subclasses give ``_map``/``_unmap``.

    Args:
        shape: Event shape ``(C, H, W)``.
        context: Number of context features, given to the CNN as constant channels (0: unconditional).
        mask: ``"channel"`` or ``"checkerboard"``.
        flip: Swap the fixed and the transformed parts.
        hidden: Hidden channels of the `ConvNet`: one int for both hidden layers, or a sequence of widths.
        activation: Activation of the CNN: ``"relu"``, ``"tanh"``, ``"silu"``, ``"elu"`` or ``"gelu"``.
    """

    params_per_channel = 1

    def __init__(self, shape: tuple[int, int, int], context: int = 0, mask: str = "channel", flip: bool = False,
                 hidden: int | Sequence[int] = 64, activation: str = "relu") -> None:
        super().__init__()
        channels, height, width = image_shape(shape)
        self.mask_kind, self.flip = mask, flip
        k = self.params_per_channel
        if mask == "channel":
            if channels < 2:
                raise ValueError(f"a channel mask needs at least 2 channels, got shape {tuple(shape)}")
            self.split = channels // 2
            n_id = channels - self.split if flip else self.split
            self.net = ConvNet(n_id + context, k * (channels - n_id), hidden, activation)
        elif mask == "checkerboard":
            if height * width < 2:
                raise ValueError(f"a checkerboard mask needs at least 2 pixels, got shape {tuple(shape)}")
            self.register_buffer("mask", checkerboard_mask(height, width, flip))
            self.net = ConvNet(channels + context, k * channels, hidden, activation)
        else:
            raise ValueError(f"unknown mask {mask!r}: use 'channel' or 'checkerboard'")

    def _parts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a, b = x[:, : self.split], x[:, self.split :]
        return (b, a) if self.flip else (a, b)

    def _join(self, x_id: Tensor, x_tr: Tensor) -> Tensor:
        return torch.cat([x_tr, x_id] if self.flip else [x_id, x_tr], dim=1)

    def _couple(self, x: Tensor, context: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        step = self._unmap if inverse else self._map
        if self.mask_kind == "channel":
            x_id, x_tr = self._parts(x)
            y_tr, ladj = step(x_tr, self.net(append_context(x_id, context)), None)
            return self._join(x_id, y_tr), ladj
        return step(x, self.net(append_context(x * self.mask, context)), 1 - self.mask)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(x, context, inverse=False)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(z, context, inverse=True)

    def _map(self, x: Tensor, params: Tensor, active: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _unmap(self, z: Tensor, params: Tensor, active: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class ImageAffineCoupling(ImageCoupling):
    """Affine coupling (RealNVP, Glow): ``z_tr = (x_tr - t) exp(-s)``, ``z_id = x_id``, with ``(t, s_raw)`` from
    the CNN and ``s = B tanh(s_raw / B)`` (``B = scale_bound``; None: no bound); log|det dz/dx| = -sum(s).

    Data -> latent as above; latent -> data ``x_tr = z_tr exp(s) + t``, ``log|det dx/dz| = +sum(s)``. The
    registered `channel_affine_coupling` and `checkerboard_affine_coupling` build it.

    Args:
        shape: Event shape ``(C, H, W)``.
        context: Number of context features, given to the CNN as constant channels (0: unconditional).
        mask: ``"channel"`` or ``"checkerboard"``.
        flip: Swap the fixed and the transformed parts.
        hidden: Hidden channels of the `ConvNet`: one int for both hidden layers, or a sequence of widths.
        activation: Activation of the CNN: ``"relu"``, ``"tanh"``, ``"silu"``, ``"elu"`` or ``"gelu"``.
        scale_bound: Bound ``B`` of the log-scale; ``None``: unbounded.

    References:
        L. Dinh, J. Sohl-Dickstein, S. Bengio. Density estimation using Real NVP (2017); D. P. Kingma,
        P. Dhariwal. Glow (2018). https://arxiv.org/abs/1605.08803, https://arxiv.org/abs/1807.03039
    """

    params_per_channel = 2

    def __init__(self, shape: tuple[int, int, int], context: int = 0, mask: str = "channel", flip: bool = False,
                 hidden: int | Sequence[int] = 64, activation: str = "relu", scale_bound: float | None = 3.0) -> None:
        super().__init__(shape, context, mask, flip, hidden, activation)
        self.scale_bound = scale_bound

    def _shift_scale(self, params: Tensor, active: Tensor | None) -> tuple[Tensor, Tensor]:
        shift, raw = params.chunk(2, dim=1)
        s = bounded_log_scale(raw, self.scale_bound)
        if active is not None:
            shift, s = shift * active, s * active
        return shift, s

    def _map(self, x: Tensor, params: Tensor, active: Tensor | None) -> tuple[Tensor, Tensor]:
        shift, s = self._shift_scale(params, active)
        return (x - shift) * torch.exp(-s), -sum_except_batch(s)

    def _unmap(self, z: Tensor, params: Tensor, active: Tensor | None) -> tuple[Tensor, Tensor]:
        shift, s = self._shift_scale(params, active)
        return z * torch.exp(s) + shift, sum_except_batch(s)


class ImageAdditiveCoupling(ImageCoupling):
    """Additive coupling (NICE): ``z_tr = x_tr + t(x_id, context)``, ``z_id = x_id``; log|det| = 0.

    Data -> latent as above; latent -> data ``x_tr = z_tr - t``. The registered `channel_additive_coupling`
    and `checkerboard_additive_coupling` build it.

    Args:
        shape: Event shape ``(C, H, W)``.
        context: Number of context features, given to the CNN as constant channels (0: unconditional).
        mask: ``"channel"`` or ``"checkerboard"``.
        flip: Swap the fixed and the transformed parts.
        hidden: Hidden channels of the `ConvNet`: one int for both hidden layers, or a sequence of widths.
        activation: Activation of the CNN: ``"relu"``, ``"tanh"``, ``"silu"``, ``"elu"`` or ``"gelu"``.

    References:
        L. Dinh, D. Krueger, Y. Bengio. NICE: Non-linear Independent Components Estimation (2014).
        https://arxiv.org/abs/1410.8516
    """

    def _map(self, x: Tensor, params: Tensor, active: Tensor | None) -> tuple[Tensor, Tensor]:
        return x + (params if active is None else params * active), x.new_zeros(x.shape[0])

    def _unmap(self, z: Tensor, params: Tensor, active: Tensor | None) -> tuple[Tensor, Tensor]:
        return z - (params if active is None else params * active), z.new_zeros(z.shape[0])


_SMALL = {"hidden": 8}


@TRANSFORMS.register("ChannelAffineCoupling", input="image", test_kwargs=_SMALL)
def channel_affine_coupling(shape: tuple[int, int, int], context: int = 0, **kwargs: Any) -> ImageAffineCoupling:
    """Affine coupling on images, channel mask: z_tr = (x_tr - t) exp(-s); log|det| = -sum(s).

    Data -> latent: ``x_id`` is the first ``C // 2`` channels, ``z_id = x_id``, ``z_tr = (x_tr - t) exp(-s)`` with
    ``(t, s)`` from a CNN on ``(x_id, context)``; ``log|det dz/dx| = -sum(s)``. Latent -> data:
    ``x_tr = z_tr exp(s) + t``.

    Args:
        shape: Event shape ``(C, H, W)``, ``C >= 2``.
        context: Number of context features, given to the CNN as constant channels (0: unconditional).
        **kwargs: Passed to `ImageAffineCoupling`: ``flip`` (swap the two parts), ``hidden`` (width of the
            `ConvNet`'s hidden layers), ``activation`` and ``scale_bound`` (bound of the log-scale).

    Returns:
        The layer, an `ImageAffineCoupling` with ``mask="channel"``.

    References:
        L. Dinh, J. Sohl-Dickstein, S. Bengio. Density estimation using Real NVP (2017); D. P. Kingma,
        P. Dhariwal. Glow (2018). https://arxiv.org/abs/1605.08803, https://arxiv.org/abs/1807.03039

    Examples:
        >>> layer = channel_affine_coupling((4, 4, 4), context=2, hidden=8)
        >>> _ = torch.nn.init.normal_(layer.net[-1].weight, std=0.1)  # leave the identity it starts as
        >>> x, c = torch.randn(3, 4, 4, 4), torch.randn(3, 2)
        >>> z, ladj = layer(x, c)
        >>> torch.equal(z[:, :2], x[:, :2]), ladj.shape
        (True, torch.Size([3]))
        >>> torch.allclose(layer.inverse(z, c)[0], x, atol=1e-5)
        True
    """
    return ImageAffineCoupling(shape, context, mask="channel", **kwargs)


@TRANSFORMS.register("CheckerboardAffineCoupling", input="image", test_kwargs={**_SMALL, "shape": (1, 8, 8)})
def checkerboard_affine_coupling(shape: tuple[int, int, int], context: int = 0, **kwargs: Any) -> ImageAffineCoupling:
    """Affine coupling on images, checkerboard mask: z_tr = (x_tr - t) exp(-s); log|det| = -sum(s).

    Data -> latent: ``x_id`` is the pixels with ``i + j`` even (odd with ``flip``) in every channel,
    ``z_id = x_id``, ``z_tr = (x_tr - t) exp(-s)`` with ``(t, s)`` from a CNN on ``(x * mask, context)``;
    ``log|det dz/dx| = -sum(s)`` over the transformed pixels. Latent -> data: ``x_tr = z_tr exp(s) + t``.

    Args:
        shape: Event shape ``(C, H, W)`` with at least 2 pixels.
        context: Number of context features, given to the CNN as constant channels (0: unconditional).
        **kwargs: Passed to `ImageAffineCoupling`: ``flip`` (swap the two parts), ``hidden`` (width of the
            `ConvNet`'s hidden layers), ``activation`` and ``scale_bound`` (bound of the log-scale).

    Returns:
        The layer, an `ImageAffineCoupling` with ``mask="checkerboard"``.

    References:
        L. Dinh, J. Sohl-Dickstein, S. Bengio. Density estimation using Real NVP (2017).
        https://arxiv.org/abs/1605.08803

    Examples:
        >>> layer = checkerboard_affine_coupling((1, 4, 4), hidden=8)
        >>> _ = torch.nn.init.normal_(layer.net[-1].weight, std=0.1)
        >>> x = torch.randn(3, 1, 4, 4)
        >>> z, ladj = layer(x)
        >>> torch.equal(z[:, :, 0, 0], x[:, :, 0, 0]), ladj.shape  # pixel (0, 0) is fixed
        (True, torch.Size([3]))
        >>> torch.allclose(layer.inverse(z)[0], x, atol=1e-5)
        True
    """
    return ImageAffineCoupling(shape, context, mask="checkerboard", **kwargs)


@TRANSFORMS.register("ChannelAdditiveCoupling", input="image", test_kwargs=_SMALL)
def channel_additive_coupling(shape: tuple[int, int, int], context: int = 0, **kwargs: Any) -> ImageAdditiveCoupling:
    """Additive coupling on images, channel mask: z_tr = x_tr + t; log|det| = 0.

    Data -> latent: ``x_id`` is the first ``C // 2`` channels, ``z_id = x_id``, ``z_tr = x_tr + t(x_id, context)``
    with ``t`` a CNN; latent -> data ``x_tr = z_tr - t``. Volume preserving: ``log|det dz/dx| = 0``.

    Args:
        shape: Event shape ``(C, H, W)``, ``C >= 2``.
        context: Number of context features, given to the CNN as constant channels (0: unconditional).
        **kwargs: Passed to `ImageAdditiveCoupling`: ``flip`` (swap the two parts), ``hidden`` (width of
            the `ConvNet`'s hidden layers) and ``activation``.

    Returns:
        The layer, an `ImageAdditiveCoupling` with ``mask="channel"``.

    References:
        L. Dinh, D. Krueger, Y. Bengio. NICE: Non-linear Independent Components Estimation (2014).
        https://arxiv.org/abs/1410.8516

    Examples:
        >>> layer = channel_additive_coupling((2, 4, 4), hidden=8)
        >>> _ = torch.nn.init.normal_(layer.net[-1].weight, std=0.1)
        >>> x = torch.randn(3, 2, 4, 4)
        >>> z, ladj = layer(x)
        >>> torch.equal(z[:, :1], x[:, :1]), ladj
        (True, tensor([0., 0., 0.]))
        >>> torch.allclose(layer.inverse(z)[0], x, atol=1e-5)
        True
    """
    return ImageAdditiveCoupling(shape, context, mask="channel", **kwargs)


@TRANSFORMS.register("CheckerboardAdditiveCoupling", input="image", test_kwargs={**_SMALL, "shape": (1, 8, 8)})
def checkerboard_additive_coupling(shape: tuple[int, int, int], context: int = 0,
                                   **kwargs: Any) -> ImageAdditiveCoupling:
    """Additive coupling on images, checkerboard mask: z_tr = x_tr + t; log|det| = 0.

    Data -> latent: ``x_id`` is the pixels with ``i + j`` even (odd with ``flip``) in every channel,
    ``z_id = x_id``, ``z_tr = x_tr + t(x * mask, context)`` with ``t`` a CNN; latent -> data ``x_tr = z_tr - t``.
    Volume preserving: ``log|det dz/dx| = 0``.

    Args:
        shape: Event shape ``(C, H, W)`` with at least 2 pixels.
        context: Number of context features, given to the CNN as constant channels (0: unconditional).
        **kwargs: Passed to `ImageAdditiveCoupling`: ``flip`` (swap the two parts), ``hidden`` (width of
            the `ConvNet`'s hidden layers) and ``activation``.

    Returns:
        The layer, an `ImageAdditiveCoupling` with ``mask="checkerboard"``.

    References:
        L. Dinh, D. Krueger, Y. Bengio. NICE: Non-linear Independent Components Estimation (2014).
        https://arxiv.org/abs/1410.8516

    Examples:
        >>> layer = checkerboard_additive_coupling((1, 4, 4), context=2, hidden=8, flip=True)
        >>> _ = torch.nn.init.normal_(layer.net[-1].weight, std=0.1)
        >>> x, c = torch.randn(3, 1, 4, 4), torch.randn(3, 2)
        >>> z, ladj = layer(x, c)
        >>> torch.equal(z[:, :, 0, 1], x[:, :, 0, 1]), ladj  # with flip, pixel (0, 1) is fixed
        (True, tensor([0., 0., 0.]))
        >>> torch.allclose(layer.inverse(z, c)[0], x, atol=1e-5)
        True
    """
    return ImageAdditiveCoupling(shape, context, mask="checkerboard", **kwargs)


@functools.cache
def _logit_edges(alpha: float, dtype: torch.dtype) -> tuple[float, float, float, float]:
    """``(lo, hi, lo_in, hi_in)``: `Logit`'s domain edges ``-a`` and ``1 + a`` rounded to ``dtype``, and
    the representable points just inside them (``nextafter`` inwards; the smallest normal number if
    ``lo = 0``, so that a flush-to-zero mode cannot turn it into the edge)."""
    a = alpha / (1 - 2 * alpha)
    edges = torch.tensor([-a, 1 + a], dtype=dtype)
    inner = torch.nextafter(edges, torch.tensor([math.inf, -math.inf], dtype=dtype))
    (lo, hi), (lo_in, hi_in) = edges.tolist(), inner.tolist()
    if lo == 0:
        lo_in = torch.finfo(dtype).tiny
    return lo, hi, lo_in, hi_in


class Logit(Bijection):
    """Logit preprocessing (Dinh et al. 2017), elementwise on any shape: data ``y`` in (0, 1) ->
    ``x = logit(s)``, ``s = alpha + (1 - 2 alpha) y``;
    log|det dx/dy| = sum[log(1 - 2 alpha) - log s - log(1 - s)].

    The map is defined wherever ``s`` is in (0, 1), i.e. ``y`` in ``(lo, hi) = (-a, 1 + a)``,
    ``a = alpha / (1 - 2 alpha)``; other inputs raise ValueError. The inverse is
    ``y = (sigmoid(x) - alpha) / (1 - 2 alpha) = lo + (hi - lo) sigmoid(x)``.

    Floating point. Both directions use the edges rounded to the input's dtype and compute
    ``x = log(y - lo) - log(hi - y)``, ``log|det| = sum[log(hi - lo) - log(y - lo) - log(hi - y)]``
    (the same map with the edges rounded: ``s = (y - lo) / (hi - lo)``). Near an edge ``y - lo`` and
    ``hi - y`` are exact (Sterbenz), so the domain check is the exact comparison ``lo < y < hi`` and every
    ``y`` that passes has a finite ``x`` and log-det (``alpha + (1 - 2 alpha) y`` would cancel to 0 first).
    The inverse stays strictly inside: at large ``|x|`` (from about 17 in float32 and 37 in float64 above 0)
    ``lo + (hi - lo) sigmoid(x)`` rounds onto an edge, so the result is clamped to the representable
    points next to the edges. The exact value lies strictly inside the domain, so the clamped point is no
    farther from it than the unclamped result or one unit in the last place: the clamp rounds onto the
    open domain instead of onto the reals. The inverse's log-det is the exact one at ``x``. Hence
    ``log_prob`` accepts every sample of a flow built on this map. The other remedy, widening the forward's
    check by the rounding, is not exact: it would accept points on the edge, where ``log(y - lo)`` is
    infinite, and out-of-domain data (raw pixel values of exactly 1 with ``alpha = 0``) without an error.
    (A sample clamped this way is scored at the clamped point, so there ``sample_and_log_prob`` reports the
    density at the drawn latent and ``log_prob`` the finite density at the point returned.)

    Args:
        alpha: Margin in ``[0, 0.5)`` that keeps ``s`` away from 0 and 1.

    Raises:
        ValueError: If ``alpha`` is outside ``[0, 0.5)``; from ``forward``, if an input is outside ``(lo, hi)``.

    References:
        L. Dinh, J. Sohl-Dickstein, S. Bengio. Density estimation using Real NVP (2017), section 4.1.
        https://arxiv.org/abs/1605.08803

    Examples:
        >>> layer = Logit(alpha=0.0)
        >>> x, ladj = layer(torch.tensor([[0.5, 0.75]]))
        >>> torch.allclose(x, torch.tensor([[0.0, 1.0986]]), atol=1e-4)  # log(0.75 / 0.25) = log 3
        True
        >>> layer.inverse(x)[0]
        tensor([[0.5000, 0.7500]])
    """

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        if not 0 <= alpha < 0.5:
            raise ValueError(f"alpha must be in [0, 0.5), got {alpha}")
        self.alpha = alpha

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if not x.is_floating_point():
            raise ValueError(f"Logit needs a floating-point tensor, got dtype {x.dtype}")
        lo, hi, _, _ = _logit_edges(self.alpha, x.dtype)
        below, above = x - lo, hi - x  # exact near the edges: positive exactly when lo < x < hi
        if not ((below > 0) & (above > 0)).all():
            a = self.alpha / (1 - 2 * self.alpha)
            raise ValueError(f"Logit(alpha={self.alpha}) needs inputs in ({-a:.4g}, {1 + a:.4g}); "
                             f"got values in [{x.min().item():.4g}, {x.max().item():.4g}]")
        log_below, log_above = torch.log(below), torch.log(above)
        ladj = math.prod(x.shape[1:]) * math.log(hi - lo) - sum_except_batch(log_below + log_above)
        return log_below - log_above, ladj

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        lo, hi, lo_in, hi_in = _logit_edges(self.alpha, z.dtype)
        width = hi - lo
        tail = torch.sigmoid(-z.abs())  # sigmoid(z) below 0, 1 - sigmoid(z) above: accurate in both tails
        y = torch.where(z < 0, lo + width * tail, hi - width * tail).clamp(lo_in, hi_in)
        ladj = sum_except_batch(F.logsigmoid(z) + F.logsigmoid(-z)) + math.prod(z.shape[1:]) * math.log(width)
        return y, ladj


@TRANSFORMS.register("Logit", input="image", conditional=False, domain="unit")
def logit(shape: tuple[int, ...] | None = None, context: int = 0, alpha: float = 0.05) -> Logit:
    """Logit preprocessing for data in (0, 1): x = logit(alpha + (1 - 2 alpha) y), with its log-det.

    Data -> latent, elementwise on any shape: ``x = logit(s)``, ``s = alpha + (1 - 2 alpha) y``,
    ``log|det dx/dy| = sum[log(1 - 2 alpha) - log s - log(1 - s)]``; latent -> data is
    ``y = (sigmoid(x) - alpha) / (1 - 2 alpha)``. See `Logit` for the domain and the floating-point care.

    Args:
        shape: Event shape (unused: the map is elementwise); accepted for the registry's common signature.
        context: Must be 0 (unconditional).
        alpha: Margin in ``[0, 0.5)`` that keeps ``s`` away from 0 and 1.

    Returns:
        The layer, a `Logit`.

    References:
        L. Dinh, J. Sohl-Dickstein, S. Bengio. Density estimation using Real NVP (2017).
        https://arxiv.org/abs/1605.08803

    Examples:
        >>> layer = logit((1, 2, 2), alpha=0.05)
        >>> y = torch.rand(3, 1, 2, 2)
        >>> x, ladj = layer(y)
        >>> x.shape, ladj.shape
        (torch.Size([3, 1, 2, 2]), torch.Size([3]))
        >>> torch.allclose(layer.inverse(x)[0], y, atol=1e-5)
        True
    """
    return Logit(alpha)
