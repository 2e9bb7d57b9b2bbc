"""Input checks shared by the ops (ValueError with a message naming the argument), and the Triton launch
helper of the MAE token ops."""

from __future__ import annotations

import contextlib
from functools import cache

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, x, dim: int | None = None, float_: bool = True) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if dim is not None and x.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(x.shape)}")
    if float_ and x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float16/bfloat16/float32/float64, got {x.dtype}")
    if any(s == 0 for s in x.shape):
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")


def check_ids(name: str, ids, ref: torch.Tensor, batch: int) -> None:
    check_tensor(name, ids, dim=2, float_=False)
    if ids.dtype != torch.int64:
        raise ValueError(f"{name} must be int64, got {ids.dtype}")
    if ids.shape[0] != batch:
        raise ValueError(f"{name} has batch {ids.shape[0]}, expected {batch}")
    if ids.device != ref.device:
        raise ValueError(f"{name} is on {ids.device} but the data is on {ref.device}")


def check_id_range(name: str, ids: torch.Tensor, upper: int) -> None:
    """ValueError when an index of CPU ``ids`` is outside [0, upper). CUDA ids are not read on the
    host (that would be a sync per call; the kernels index with them as given), nor while
    torch.compile traces (no data then)."""
    if ids.device.type != "cpu" or torch.compiler.is_compiling() or ids.numel() == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= upper:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} holds the index {bad}, outside [0, {upper}) (the number of patches)")


def check_same(a_name: str, a: torch.Tensor, b_name: str, b: torch.Tensor, dtype: bool = True,
               autocast_hint: bool = True) -> None:
    """ValueError unless a and b are on one device (and, with ``dtype``, of one dtype). ``autocast_hint``:
    the dtype error suggests torch.autocast (for ops that cast their parameters under autocast)."""
    if a.device != b.device:
        raise ValueError(f"{a_name} is on {a.device} but {b_name} is on {b.device}")
    if dtype and a.dtype != b.dtype:
        hint = " (cast them to one dtype, or run under torch.autocast)" if autocast_hint else ""
        raise ValueError(f"{a_name} is {a.dtype} but {b_name} is {b.dtype}{hint}")


def check_patch(images: torch.Tensor, patch_size) -> tuple[int, int]:
    """(gh, gw) patch grid of images [B, C, H, W]; ValueError when the patch does not divide H or W."""
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    h, w = images.shape[-2:]
    if h % patch_size or w % patch_size:
        raise ValueError(f"patch_size {patch_size} does not divide the image size {h}x{w}")
    return h // patch_size, w // patch_size


def patch_view(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, H, W] (any strides) -> a view [B, gh, gw, C, p, p] (no copy)."""
    p = patch_size
    return images.unflatten(2, (-1, p)).unflatten(4, (-1, p)).permute(0, 2, 4, 1, 3, 5)


def is_channels_last(images: torch.Tensor) -> bool:
    """True when each pixel row of images [B, C, H, W] holds its W*C values contiguously (channels_last
    memory: stride(1) == 1, stride(3) == C), so a patch row's p*C values are one contiguous run."""
    c = images.shape[1]
    return c > 1 and images.stride(1) == 1 and images.stride(3) == c


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype active for ``device``'s type, or None."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


INT32_MAX = 2**31 - 1


@cache
def _device_arch(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def device_arch(x: torch.Tensor) -> tuple[int, int] | None:
    """Compute capability of CUDA tensor ``x``'s device; None for CPU tensors (the Triton interpreter)."""
    if not x.is_cuda:
        return None
    return _device_arch(x.device.index if x.device.index is not None else torch.cuda.current_device())


def launch(plan: list, x: torch.Tensor, strided: tuple[str, ...] = ("IMG",)) -> None:
    """Run a launch plan ``[(kernel, grid, args, kwargs)]`` on ``x``'s device (the current device is made
    x's, so cuda:1 works). Every tensor argument must be contiguous except those named in ``strided``
    (the kernels read them through their strides): a kernel indexes flat pointers, so a strided view
    would be read wrong. RuntimeError (a bug in the launcher, not user input) otherwise."""
    guard = torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()
    with guard:
        for kernel, grid, args, kw in plan:
            for name, a in zip(kernel.arg_names, args):
                if isinstance(a, torch.Tensor) and name not in strided and not a.is_contiguous():
                    raise RuntimeError(f"{kernel.fn.__name__}: argument {name} is not contiguous "
                                       f"(strides {a.stride()}); the kernel reads it as a flat array")
            kernel[grid](*args, **kw)
