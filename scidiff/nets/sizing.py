"""Sizing a network: parameter counts, multiply-accumulate counts, a printable summary.

Operation counts come from ``torch.utils.flop_counter.FlopCounterMode``, which
counts the matrix products of a forward pass (convolutions, linear layers, the
attention matmuls, fused attention included); elementwise work (normalisation,
activations, additions, softmax) is not counted, as is customary.  One
multiply-accumulate (MAC) is two floating-point operations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from scidiff.nets.encoder import NoisyEncoder
from scidiff.nets.unet import UNet
from scidiff._validate import check_int


def count_parameters(module: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``module`` (shared parameters counted once).

    With ``trainable_only=True`` only parameters with ``requires_grad`` count.
    Buffers (e.g. fixed Fourier frequencies) are not parameters and never count.
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _sdpa_flops(
    query_shape: Sequence[int], key_shape: Sequence[int], value_shape: Sequence[int], *args: Any, **kwargs: Any
) -> int:
    """FLOPs of softmax(Q K^T) V for Q [..., L, d], K [..., S, d], V [..., S, d_v]: 2 L S (d + d_v) per batch entry."""
    *batch, L, d = query_shape
    S, d_v = key_shape[-2], value_shape[-1]
    n = 1
    for b in batch:
        n *= b
    return 2 * n * L * S * (d + d_v)


def _custom_counts() -> dict[Any, Callable[..., int]]:
    """FLOP formulas for kernels that ``FlopCounterMode`` does not know (the CPU fused attention)."""
    mapping: dict[Any, Callable[..., int]] = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = _sdpa_flops
    return mapping


def _example_call(
    module: nn.Module,
    example_shape: Sequence[int],
    *,
    t: float | Tensor | None,
    cond: Tensor | None,
    extra: Tensor | None,
) -> Callable[[], Any]:
    """A zero-argument function running one forward of ``module`` on zeros of ``example_shape``.

    Time-conditioned networks (``UNet``, ``NoisyEncoder``, or any module when ``t``
    is given) are called as ``module(x, t, cond=..., extra=...)``, other modules as
    ``module(x)``.  A missing ``cond`` / ``extra`` that the network needs is zeros.
    """
    shape = tuple(int(n) for n in example_shape)
    param = next(module.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.get_default_dtype()
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(shape, dtype=dtype, device=device)
    if t is None and not isinstance(module, (UNet, NoisyEncoder)):
        return lambda: module(x)
    batch = shape[0]
    t_ = torch.full((batch,), 0.5, dtype=dtype, device=device) if t is None else t
    kwargs: dict[str, Tensor] = {}
    cond_dim = int(getattr(module, "cond_dim", 0))
    if cond is None and cond_dim > 0:
        cond = torch.zeros(batch, cond_dim, dtype=dtype, device=device)
    if cond is not None:
        kwargs["cond"] = cond
    extra_channels = int(getattr(module, "extra_channels", 0))
    if extra is None and extra_channels > 0:
        extra = torch.zeros(batch, extra_channels, *shape[2:], dtype=dtype, device=device)
    if extra is not None:
        kwargs["extra"] = extra
    return lambda: module(x, t_, **kwargs)


def _count(call: Callable[[], Any]) -> tuple[FlopCounterMode, Any]:
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_custom_counts()) as counter:
        out = call()
    return counter, out


def estimate_flops(
    module: nn.Module,
    example_shape: Sequence[int],
    *,
    t: float | Tensor | None = None,
    cond: Tensor | None = None,
    extra: Tensor | None = None,
    unit: str = "macs",
) -> int:
    """Operation count of one forward pass of ``module`` on an input of ``example_shape``.

    Counts the matrix products (convolutions, linear layers, attention matmuls);
    ``unit="macs"`` (default) returns multiply-accumulates, ``unit="flops"`` twice
    that.  For a convolution with C_in input and C_out output channels, kernel
    volume K and output positions P (batch included) the count is
    ``P * C_out * C_in * K`` MACs.

    The input is zeros of ``example_shape`` [B, C, *spatial] in the module's dtype
    and device.  ``UNet`` and ``NoisyEncoder`` are called with t = 0.5 and zero
    ``cond`` / ``extra`` where needed; another module is called as ``module(x)``,
    or as ``module(x, t, ...)`` when ``t`` is given.
    """
    if unit not in ("macs", "flops"):
        raise ValueError(f"unit must be 'macs' or 'flops'; got {unit!r}")
    counter, _ = _count(_example_call(module, example_shape, t=t, cond=cond, extra=extra))
    flops = int(counter.get_total_flops())
    return flops // 2 if unit == "macs" else flops


def _human(n: float) -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}"
    return f"{n:.0f}"


def _rows(net: nn.Module, depth: int) -> list[tuple[str, nn.Module]]:
    """Submodules down to ``depth`` levels below ``net``, in definition order."""
    rows: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, module: nn.Module, level: int) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            rows.append((full, child))
            if level < depth:
                walk(full + ".", child, level + 1)

    walk("", net, 1)
    return rows


def summary(
    net: nn.Module,
    shape: Sequence[int],
    *,
    t: float | Tensor | None = None,
    cond: Tensor | None = None,
    extra: Tensor | None = None,
    depth: int = 2,
) -> str:
    """A table of every submodule down to ``depth`` levels: type, parameters, MACs
    of one forward at input ``shape`` (see ``estimate_flops``) and output shape,
    followed by the totals.  Returns the table as a string (print it).
    """
    check_int("depth", depth)
    rows = _rows(net, depth)
    out_shapes: dict[str, str] = {}

    def recorder(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            first = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(first, Tensor):
                out_shapes[name] = str(list(first.shape))

        return hook

    handles = [module.register_forward_hook(recorder(name)) for name, module in rows]
    try:
        counter, out = _count(_example_call(net, shape, t=t, cond=cond, extra=extra))
    finally:
        for handle in handles:
            handle.remove()
    counts = counter.get_flop_counts()
    root = type(net).__name__

    def macs(name: str, module: nn.Module) -> int:
        # containers that are never called themselves (ModuleList) add up their children
        key = f"{root}.{name}"
        if key in counts:
            return sum(counts[key].values()) // 2
        return sum(macs(f"{name}.{child}", sub) for child, sub in module.named_children())

    table = [("module", "type", "params", "MACs", "output")]
    for name, module in rows:
        indent = "  " * name.count(".")
        table.append(
            (
                indent + name.rsplit(".", 1)[-1],
                type(module).__name__,
                f"{count_parameters(module):,}",
                _human(macs(name, module)),
                out_shapes.get(name, "-"),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    lines = [f"{type(net).__name__} at input {list(shape)}"]
    for i, row in enumerate(table):
        cells = (cell.ljust(w) if j in (0, 1, 4) else cell.rjust(w) for j, (cell, w) in enumerate(zip(row, widths)))
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("-" * len(lines[-1]))
    total_params = count_parameters(net)
    total_macs = int(counter.get_total_flops()) // 2
    out_shape = list(out.shape) if isinstance(out, Tensor) else "-"
    lines.append("-" * len(lines[1]))
    lines.append(f"total parameters: {total_params:,}")
    lines.append(f"MACs per forward: {total_macs:,} ({_human(total_macs)}; FLOPs = 2 x MACs)")
    lines.append(f"output shape: {out_shape}")
    return "\n".join(lines)
