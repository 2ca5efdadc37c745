"""Input checks that fail with one clear ``ValueError`` instead of a NaN or a deep torch trace."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["check_context", "check_device", "check_input", "check_sizes"]


def check_input(x: Tensor, event_shape: torch.Size | tuple, ref: Tensor | None, what: str = "x") -> None:
    """``x`` must be a floating tensor ``(batch, *event_shape)`` without NaN/inf, matching ``ref``'s dtype/device."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{what} must be a floating-point tensor, got dtype {x.dtype}")
    event_shape = tuple(event_shape)
    if x.dim() != len(event_shape) + 1 or tuple(x.shape[1:]) != event_shape:
        raise ValueError(
            f"{what} has shape {tuple(x.shape)}: expected (batch, {', '.join(map(str, event_shape))}), "
            f"i.e. event shape {event_shape}, got event shape {tuple(x.shape[1:])}"
        )
    if ref is not None:
        if x.dtype != ref.dtype:
            raise ValueError(f"dtype mismatch: {what} is {x.dtype} but the flow is {ref.dtype}; use .to({ref.dtype})")
        if x.device != ref.device:
            raise ValueError(f"device mismatch: {what} is on {x.device} but the flow is on {ref.device}")
    # one reduction: the sum is finite when every entry is (a non-finite sum of finite values, an overflow,
    # is told apart by the exact check)
    if not math.isfinite(float(x.detach().sum())) and not torch.isfinite(x).all():
        bad = "NaN" if torch.isnan(x).any() else "inf"
        raise ValueError(f"{what} contains {bad} values ({int((~torch.isfinite(x)).sum())} non-finite entries)")


def check_context(context: Tensor | None, features: int, batch: int | None, ref: Tensor | None) -> None:
    """A conditional flow needs ``context`` of shape ``(features,)`` or ``(rows, features)``; an unconditional
    one takes none.

    With ``batch`` given (the number of data rows), ``rows`` must be ``batch`` (row j goes with data row j)
    or 1 (one row shared by every data row), as must any ``(features,)`` vector; ``batch=None`` (sampling)
    takes any number of rows.
    """
    if features == 0:
        if context is not None:
            raise ValueError("this flow is unconditional (context=0) but a context was given")
        return
    if context is None:
        raise ValueError(f"this flow is conditional and needs context of shape (batch, {features}) "
                         f"or ({features},); got None")
    if not isinstance(context, Tensor) or context.dim() not in (1, 2) or context.shape[-1] != features:
        shape = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
        raise ValueError(f"context has shape {shape}: expected (batch, {features}), "
                         f"or ({features},) for one context shared by every row")
    rows = context.shape[0] if context.dim() == 2 else 1
    if batch is not None and rows not in (1, batch):
        raise ValueError(f"context has {rows} rows but x has {batch}: expected one context row per x row, "
                         f"or a single row shared by all")
    check_input(context.reshape(-1, features), (features,), ref, what="context")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_sizes(features: int, context: int = 0, hidden: Sequence[int] = (), **counts: int) -> None:
    """Sizes of a vector flow: ``features`` and every one of ``counts`` (e.g. ``transforms=``) positive integers,
    ``context`` a non-negative integer, ``hidden`` a sequence of positive layer widths."""
    for name, value in {"features": features, **counts}.items():
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not _is_int(context) or context < 0:
        raise ValueError(f"context must be a non-negative integer (0: unconditional), got {context!r}")
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence) \
            or not all(_is_int(h) and h >= 1 for h in hidden):
        raise ValueError(f"hidden must be a sequence of positive layer widths such as (64, 64), got {hidden!r}")


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a `torch.device`, with a ``ValueError`` if torch does not know it or it is not available."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r} (use cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} asked for, but no CUDA device is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} asked for, but there are only "
                             f"{torch.cuda.device_count()} CUDA devices")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but MPS is not available")
    return dev
