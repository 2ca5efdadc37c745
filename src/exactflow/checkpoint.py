"""Checkpoints without pickle: one ``.safetensors`` file holding the tensors and, in its JSON header,
everything needed to rebuild the flow.

Every flow built from registered parts can be saved: a preset records ``flow.spec = {"flow": name, "kwargs": {...},
"preprocess": [...]}`` however it is called, and a flow composed by hand is described as a tree of registry names and
constructor arguments (`exactflow.flows.describe`, JSON only). `save` writes

- tensors: ``model.<key>`` (the state dict), plus any extra tensors of the caller
  (optimizer moments, RNG states, best weights when training);
- header metadata ``"exactflow"``: JSON with the format number, the exactflow version, the spec (that description),
  the flow's floating dtype and free-form ``info`` (training configuration, data set and splits,
  history, optimizer scalars);
- header metadata ``"exactflow.sha256"``: the SHA-256 of the ``"exactflow"`` JSON and of every
  tensor (name, dtype, shape, bytes), so an edited spec is caught like a flipped weight.

Writing is atomic: a temporary file in the same folder (named after the writing process), flushed
and ``fsync``-ed, then ``os.replace``; a crash leaves either the old checkpoint or the new one,
never a mix, and the next write of the same file removes temporary files whose process is gone.
`load` rebuilds the flow from the registries (`exactflow.flows.rebuild`) and refuses, with a
``ValueError`` naming the problem, files that are corrupted, truncated, edited, from another format, or whose keys
or shapes do not match the flow their spec builds.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .distributions import Flow
from .flows import build, describe, prepend, rebuild
from .validation import check_device

# build, prepend and rebuild live with the registry (exactflow.flows); they stay importable from here
__all__ = ["FORMAT", "build", "info", "load", "load_state", "prepend", "read", "rebuild", "resolve", "save",
           "write_json"]

FORMAT = 2
MODEL = "model."
HEADER, CHECKSUM = "exactflow", "exactflow.sha256"
REQUIRED = ("format", "version", "spec", "dtype", "info")
_UMASK = os.umask(0)
os.umask(_UMASK)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"cannot record {value!r} ({type(value).__name__}) in a checkpoint: only numbers, strings, "
                     "booleans, lists and dicts can be rebuilt without pickle")


def _digest(header: str, tensors: dict[str, Tensor]) -> str:
    """SHA-256 of the header JSON text and of every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    h.update(f"{len(header)}:{header};".encode())
    for key in sorted(tensors):
        t = tensors[key]
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (always True where that cannot be asked safely)."""
    if os.name != "posix" or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Delete ``.<name>.<pid>.*.tmp`` files of earlier writes of ``path`` whose process is gone (killed mid-write)."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if not pid.isdigit() or not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json(path: str | Path, obj: dict) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    _write_atomic(Path(path), (json.dumps(_jsonable(obj), indent=2) + "\n").encode())


def write_tensors(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (e.g. a ``state_dict``) as safetensors, atomically."""
    from safetensors.torch import save as to_bytes

    _write_atomic(Path(path), to_bytes({k: v.detach().contiguous() for k, v in tensors.items()}, metadata=metadata))


def save(path: str | Path, flow: Flow, info: dict | None = None, extra: dict[str, Tensor] | None = None) -> Path:
    """Write ``flow`` atomically to ``path``: its description (`exactflow.flows.describe`; a ``ValueError``
    names any part that is not registered) and its weights.

    ``info`` (JSON-able) and ``extra`` tensors (keys must not start with ``model.``) are stored beside it.
    """
    from safetensors.torch import save as to_bytes

    from . import __version__

    if not isinstance(flow, Flow):
        raise ValueError(f"save expects an exactflow Flow, got {type(flow).__name__}")
    spec = describe(flow)
    tensors = {MODEL + k: v for k, v in flow.state_dict().items()}
    for key, value in (extra or {}).items():
        if key.startswith(MODEL):
            raise ValueError(f"extra tensor {key!r} clashes with the model's keys (prefix {MODEL!r})")
        tensors[key] = value
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    header = json.dumps({"format": FORMAT, "version": __version__, "spec": spec,
                         "dtype": str(_dtype(flow)).removeprefix("torch."), "info": _jsonable(info or {})})
    path = Path(path)
    _write_atomic(path, to_bytes(tensors, metadata={HEADER: header, CHECKSUM: _digest(header, tensors)}))
    return path


def _dtype(flow: nn.Module) -> torch.dtype:
    """The dtype of the flow's first floating parameter or buffer (torch's default if it has none)."""
    for t in (*flow.parameters(), *flow.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


def resolve(path: str | Path) -> Path:
    """A checkpoint file from a file or a run folder (``model.safetensors``, else ``checkpoint.safetensors``)."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", "checkpoint.safetensors"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"no model.safetensors or checkpoint.safetensors in folder {str(path)!r}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    return path


def read(path: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """The header and all tensors of a checkpoint, after checking format, checksum (header and tensors) and
    that the header holds every key `REQUIRED`."""
    from safetensors import SafetensorError
    from safetensors.torch import load as from_bytes

    path = resolve(path)
    try:
        data = path.read_bytes()
        tensors = from_bytes(data)
        n = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + n]).get("__metadata__") or {}
    except (SafetensorError, ValueError, UnicodeDecodeError, RuntimeError) as err:
        raise ValueError(f"{path}: corrupted or truncated checkpoint ({err})") from None
    if HEADER not in meta:
        raise ValueError(f"{path}: a safetensors file, but not an exactflow checkpoint (no 'exactflow' header)")
    try:
        header = json.loads(meta[HEADER])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: corrupted checkpoint header ({err})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: corrupted checkpoint header (not a JSON object)")
    if header.get("format") != FORMAT:
        hint = " (its checksum does not cover the header, so it cannot be verified: train it again)" \
            if header.get("format") == 1 else ""
        raise ValueError(f"{path}: checkpoint format {header.get('format')!r} (exactflow {header.get('version')}); "
                         f"this exactflow reads format {FORMAT} only{hint}")
    if _digest(meta[HEADER], tensors) != meta.get(CHECKSUM):
        raise ValueError(f"{path}: checksum mismatch, the file was changed or corrupted after it was written "
                         "(tensors or header)")
    missing = [key for key in REQUIRED if key not in header]
    if missing:
        raise ValueError(f"{path}: the checkpoint header lacks {', '.join(map(repr, missing))}")
    return header, tensors


CONTEXT_STATISTICS = ("context_loc", "context_scale", "context_fitted")


def _without_context_statistics(state: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    """A flow saved before the conditional presets standardised their context has no statistics: its density is
    that of statistics fixed at mean 0 and std 1, so those are put in ``state``, marked fitted (`exactflow.fit`
    keeps them); the statistics of a flow that has them are never replaced."""
    for key in expected:
        head, _, name = key.rpartition(".")
        if name != CONTEXT_STATISTICS[0]:
            continue
        keys = [f"{head}.{n}" if head else n for n in CONTEXT_STATISTICS]
        if all(k in expected and k not in state for k in keys):
            loc = keys[0]
            state[loc] = torch.zeros_like(expected[loc])
            state[keys[1]] = torch.ones_like(expected[keys[1]])
            state[keys[2]] = torch.ones_like(expected[keys[2]])


def load_state(flow: nn.Module, tensors: dict[str, Tensor], prefix: str = MODEL, where: str = "checkpoint") -> None:
    """Load ``prefix``-ed ``tensors`` into ``flow``; a ``ValueError`` lists missing/unexpected keys and shapes."""
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    expected = flow.state_dict()
    _without_context_statistics(state, expected)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: saved {tuple(state[k].shape)}, flow has {tuple(expected[k].shape)}"
              for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:5]))
        raise ValueError(f"{where} does not match the flow: " + ", ".join(parts))
    flow.load_state_dict(state)


def load(path: str | Path, device: str | torch.device = "cpu", embedding: nn.Module | None = None) -> Flow:
    """Rebuild the saved flow from the registries and load its weights (no pickle); returns it in eval mode,
    in the dtype it was saved in, on ``device`` (a ``ValueError`` if torch does not know it or it is absent).

    ``embedding``: for a flow saved with a context embedding network of your own (an ``nn.Module``, not layer
    widths), that network built again the same way; its saved weights are loaded into it. A ``ValueError`` says
    so when it is needed and missing."""
    device = check_device(device)
    header, tensors = read(path)
    dtype = getattr(torch, str(header["dtype"]), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{resolve(path)}: the header's dtype {header['dtype']!r} is not a floating torch dtype")
    try:
        flow = rebuild(header["spec"], embedding=embedding)
        if not isinstance(flow, Flow):
            raise ValueError(f"the spec describes a {type(flow).__name__}, not a Flow")
    except ValueError as err:
        raise ValueError(f"{resolve(path)}: cannot rebuild the saved flow (saved by exactflow "
                         f"{header.get('version')}): {err}") from None
    flow.to(dtype)
    load_state(flow, tensors, where=f"{resolve(path)} (saved by exactflow {header.get('version')})")
    return flow.to(device).eval()


def info(path: str | Path) -> dict:
    """The header of a checkpoint (format, version, spec, info), checked like `read`."""
    return read(path)[0]
