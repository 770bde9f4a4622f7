"""Triton backend: fused routed masked linear / conv2d kernels (forward and backward).

Available on CUDA devices, and on CPU under ``TRITON_INTERPRET=1`` (explicit ``backend="triton"``
only; the interpreter is for tests). Small batches take the weight-stationary decode kernel,
larger ones the grouped kernel; conv2d runs as an implicit GEMM (1×1 stride-1 unpadded convs
as the linear path). Launch configs come from JSON tables (``rtl_kernels/configs``); nothing here
reads device memory on the host, so the ops can be captured in CUDA graphs after ``warmup``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence

import torch

from ..conv_params import ConvParams, conv_output_format
from ..masks.packed import PackedMasks, ones_bits
from ..routing_plans.plan import RoutingPlan, block_schedule, make_plan
from .registry import Backend, Call, register_backend

logger = logging.getLogger(__name__)

try:
    import triton  # noqa: F401

    from ..kernels.triton import configs
    from ..kernels.triton.common import cached_tile_flags, cached_tile_lists, sorted_tickets
    from ..kernels.triton.geometry import Geometry, conv_geometry, linear_geometry
    from ..kernels.triton.grouped_gemm import launch_dx, launch_forward
    from ..kernels.triton.linear_decode import block_rows_for, launch_decode
    from ..kernels.triton.weight_grad import launch_dw

    _IMPORT_ERROR: Exception | None = None
except ImportError as exc:  # triton is an optional extra
    _IMPORT_ERROR = exc

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def is_available(device: torch.device) -> bool:
    """Triton imports and the device is CUDA, or CPU with the Triton interpreter switched on."""
    if _IMPORT_ERROR is not None:
        return False
    if device.type == "cuda":
        return torch.cuda.is_available()
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def priority(device: torch.device) -> int:
    return 100 if device.type == "cuda" else -1


def supports(call: Call) -> bool:
    """fp32/fp16/bf16 (bf16 not in the CPU interpreter, which computes it wrongly); 2-D linear, 4-D conv weights."""
    if call.dtype not in SUPPORTED_DTYPES or (call.device.type == "cpu" and call.dtype == torch.bfloat16):
        return False
    return len(call.weight_shape) == (2 if call.op == "linear" else 4)


def _config(kernel: str, device: torch.device, dtype: torch.dtype, m: int, n: int, k: int) -> dict:
    return configs.get_config(kernel, device, dtype, m, n, k)


def use_decode(device: torch.device, rows: int, num_tickets: int) -> bool:
    """Weight-stationary path when rows are few and (rows padded × possible active tickets) is small."""
    limits = configs.dispatch_limits(device)
    return 0 < rows <= limits["decode_max_rows"] and block_rows_for(rows) * min(rows, num_tickets) <= limits["decode_max_work"]


def _flags(masks: PackedMasks, tile: tuple[int, int]) -> torch.Tensor:
    return cached_tile_flags(masks, tile)


# ----------------------------------------------------------------------------- linear


def linear_launch(
    kernel: str,
    cfg: dict,
    a: torch.Tensor,
    weight: torch.Tensor,
    masks: PackedMasks,
    plan: RoutingPlan,
    bias: torch.Tensor | None = None,
    *,
    transposed: bool = False,
) -> Callable[[], torch.Tensor]:
    """The serving launch of one linear kernel with ``cfg``, as a closure (``rtl-kernels tune`` times exactly this).

    ``kernel``: ``"fwd"`` (grouped, ``a`` = x), ``"dx"`` (grouped, ``a`` = dy) or ``"decode"``
    (weight-stationary; ``transposed`` computes dx from ``a`` = dy).
    """
    bits = masks.bits.contiguous()
    m = a.shape[0]
    n, kin = weight.shape
    if kernel == "decode":
        flags = _flags(masks, (cfg["BLOCK_K"], cfg["BLOCK_N"]) if transposed else (cfg["BLOCK_N"], cfg["BLOCK_K"]))
        return lambda: launch_decode(
            a, weight, bits, flags, bias, plan.perm, sorted_tickets(plan.routes, plan.perm), plan.offsets, transposed, cfg
        )
    geom = linear_geometry(m, kin, n)
    if kernel == "fwd":
        lists = cached_tile_lists(masks, (cfg["BLOCK_N"], cfg["BLOCK_K"]), along_rows=False)

        def forward() -> torch.Tensor:
            y = torch.empty((m, n), dtype=a.dtype, device=a.device)
            launch_forward(a, weight, bits, lists, bias, y, plan.perm, block_schedule(plan, cfg["BLOCK_M"]), geom, cfg)
            return y

        return forward
    if kernel == "dx":
        lists = cached_tile_lists(masks, (cfg["BLOCK_K"], cfg["BLOCK_N"]), along_rows=True)

        def grad_input() -> torch.Tensor:
            dx = torch.empty((m, kin), dtype=a.dtype, device=a.device)
            launch_dx(a, weight, bits, lists, dx, plan.perm, block_schedule(plan, cfg["BLOCK_M"]), geom, cfg)
            return dx

        return grad_input
    raise ValueError(f"kernel: expected 'fwd', 'dx' or 'decode', got {kernel!r}")


def dw_launch(
    cfg: dict,
    dy: torch.Tensor,
    x: torch.Tensor,
    masks: PackedMasks,
    plan: RoutingPlan,
    geom: Geometry,
    dtype: torch.dtype,
    per_ticket: bool = False,
) -> Callable[[], torch.Tensor]:
    """The serving launch of the weight-gradient kernel with ``cfg``, as a closure (tuned as is)."""
    tile_ok = geom.groups == 1 and not per_ticket
    flags = _flags(masks, (cfg["BLOCK_N"], cfg["BLOCK_K"])) if tile_ok else None
    bits = masks.bits.contiguous()
    return lambda: launch_dw(
        dy, x, bits, flags, plan.perm, plan.offsets, block_schedule(plan, cfg["BLOCK_M"]), geom, cfg, dtype, per_ticket
    )


def linear_forward(x: torch.Tensor, weight: torch.Tensor, masks: PackedMasks, plan: RoutingPlan, bias: torch.Tensor | None) -> torch.Tensor:
    """``y[i] = x[i] @ (W ⊙ M[route_i])ᵀ + bias`` with fp32 accumulation."""
    m, kin = x.shape
    n = weight.shape[0]
    if m == 0 or n == 0 or kin == 0:
        y = torch.zeros((m, n), dtype=torch.float32, device=x.device)
        return (y + bias.to(torch.float32) if bias is not None else y).to(x.dtype)
    kernel = "decode" if use_decode(x.device, m, masks.num_tickets) else "fwd"
    return linear_launch(kernel, _config(kernel, x.device, x.dtype, m, n, kin), x, weight, masks, plan, bias)()


def _linear_dx(dy: torch.Tensor, weight: torch.Tensor, masks: PackedMasks, plan: RoutingPlan) -> torch.Tensor:
    m, n = dy.shape
    kin = weight.shape[1]
    kernel = "decode" if use_decode(dy.device, m, masks.num_tickets) else "dx"
    return linear_launch(kernel, _config(kernel, dy.device, dy.dtype, m, kin, n), dy, weight, masks, plan, transposed=True)()


def _weight_grad(
    dy: torch.Tensor, x: torch.Tensor, masks: PackedMasks, plan: RoutingPlan, geom: Geometry, dtype: torch.dtype, per_ticket: bool = False
) -> torch.Tensor:
    cfg = _config("dw", x.device, x.dtype, plan.num_rows, geom.c_out, geom.row_len)
    return dw_launch(cfg, dy, x, masks, plan, geom, dtype, per_ticket)()


def linear_backward(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, masks: PackedMasks, plan: RoutingPlan, need_dx: bool, need_dw: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``dx`` with each row's masked weight; ``dw = Σ_k M_k ⊙ (dY_kᵀ X_k)``."""
    m, n = dy.shape
    kin = x.shape[1]
    empty = m == 0 or n == 0 or kin == 0
    dx = dw = None
    if need_dx:
        dx = torch.zeros_like(x) if empty else _linear_dx(dy, weight, masks, plan)
    if need_dw:
        dw = torch.zeros_like(weight) if empty else _weight_grad(dy, x, masks, plan, linear_geometry(m, kin, n), weight.dtype)
    return dx, dw


def linear_ticket_grads(dy: torch.Tensor, x: torch.Tensor, plan: RoutingPlan, num_tickets: int) -> torch.Tensor:
    """Unmasked per-ticket weight gradients ``G[k] = dY_kᵀ X_k`` (fp32 ``[K, N, K_in]``), e.g. for mask scores."""
    m, n = dy.shape
    kin = x.shape[1]
    if m == 0 or n == 0 or kin == 0:
        return torch.zeros((num_tickets, n, kin), dtype=torch.float32, device=x.device)
    masks = PackedMasks.trusted(ones_bits(num_tickets, (n, kin), x.device), (n, kin))
    return _weight_grad(dy, x, masks, plan, linear_geometry(m, kin, n), torch.float32, per_ticket=True)


# ----------------------------------------------------------------------------- conv2d


def _is_pointwise(weight: torch.Tensor, params: ConvParams) -> bool:
    return weight.shape[2:] == (1, 1) and params.stride == (1, 1) and params.padding == (0, 0) and params.groups == 1


def _pixels(t: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` as ``[B·H·W, C]`` rows (a view for channels_last input; sizes explicit, as -1 is ambiguous when empty)."""
    b, c, h, w = t.shape
    return t.permute(0, 2, 3, 1).reshape(b * h * w, c)


def _images(rows: torch.Tensor, like_shape: Sequence[int], fmt: torch.memory_format) -> torch.Tensor:
    b, _, h, w = like_shape
    return rows.view(b, h, w, rows.shape[1]).permute(0, 3, 1, 2).contiguous(memory_format=fmt)


def _flat_masks(masks: PackedMasks, weight: torch.Tensor) -> PackedMasks:
    return PackedMasks.trusted(masks.bits, (weight.shape[0], weight[0].numel()))


def conv2d_forward(
    x: torch.Tensor, weight: torch.Tensor, masks: PackedMasks, plan: RoutingPlan, bias: torch.Tensor | None, params: ConvParams
) -> torch.Tensor:
    """Implicit-GEMM routed conv2d (any input strides); output in ``conv_output_format(x)``."""
    fmt = conv_output_format(x)
    if _is_pointwise(weight, params):
        hw = x.shape[2] * x.shape[3]
        y = linear_forward(
            _pixels(x).contiguous(), weight.reshape(weight.shape[0], -1), _flat_masks(masks, weight), plan.repeat_rows(hw), bias
        )
        return _images(y, x.shape, fmt)
    geom = conv_geometry(x, weight, params.stride, params.padding, params.dilation, params.groups)
    y = torch.empty((geom.batch, geom.c_out, geom.ho, geom.wo), dtype=x.dtype, device=x.device).contiguous(memory_format=fmt)
    if y.numel() == 0 or geom.row_len == 0:
        return y.zero_() if bias is None else y.copy_(bias.view(1, -1, 1, 1).expand_as(y))
    cfg = _config("fwd", x.device, x.dtype, y.numel() // geom.c_out, geom.c_out, geom.row_len)
    pix = plan.repeat_rows(geom.ho * geom.wo)
    launch_forward(x, weight, masks.bits.contiguous(), None, bias, y, pix.perm, block_schedule(pix, cfg["BLOCK_M"]), geom, cfg)
    return y


def conv2d_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    masks: PackedMasks,
    plan: RoutingPlan,
    params: ConvParams,
    need_dx: bool,
    need_dw: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``dx`` as an implicit GEMM of the transposed problem; ``dw`` with each ticket's mask in the epilogue."""
    fmt = conv_output_format(x)
    if _is_pointwise(weight, params):
        hw = x.shape[2] * x.shape[3]
        w2 = weight.reshape(weight.shape[0], -1)
        dx2, dw2 = linear_backward(
            _pixels(dy).contiguous(), _pixels(x).contiguous(), w2, _flat_masks(masks, weight), plan.repeat_rows(hw), need_dx, need_dw
        )
        return (_images(dx2, x.shape, fmt) if need_dx else None), (dw2.view(weight.shape) if need_dw else None)
    geom = conv_geometry(x, weight, params.stride, params.padding, params.dilation, params.groups)
    empty = x.numel() == 0 or dy.numel() == 0 or geom.row_len == 0
    dx = dw = None
    if need_dx:
        dx = torch.zeros(x.shape, dtype=x.dtype, device=x.device).contiguous(memory_format=fmt)
        if not empty:
            cfg = _config("dx", x.device, x.dtype, x.numel() // geom.c_in, geom.c_in, geom.c_out * geom.kh * geom.kw)
            pix = plan.repeat_rows(geom.h * geom.w)
            launch_dx(dy, weight, masks.bits.contiguous(), None, dx, pix.perm, block_schedule(pix, cfg["BLOCK_M"]), geom, cfg)
    if need_dw:
        if empty:
            dw = torch.zeros_like(weight)
        else:
            dw = _weight_grad(dy, x, masks, plan.repeat_rows(geom.ho * geom.wo), geom, weight.dtype).view(weight.shape)
    return dx, dw


# ----------------------------------------------------------------------------- warmup


DEFAULT_WARMUP_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096)


def _warm_routes(rows: int, num_tickets: int, device: torch.device) -> RoutingPlan:
    routes = torch.arange(rows, device=device) % num_tickets
    return make_plan(routes, num_tickets)


def warmup(
    linear_shapes: Iterable[Sequence] = (),
    conv_shapes: Iterable[dict] = (),
    *,
    dtypes: Iterable[torch.dtype] = (torch.bfloat16,),
    rows: Iterable[int] = DEFAULT_WARMUP_ROWS,
    device: torch.device | str = "cuda",
    backward: bool = False,
) -> int:
    """Run every kernel variant a deployment needs once, so no Triton compile happens while serving.

    ``linear_shapes``: ``(in_features, out_features, num_tickets[, bias])``; ``conv_shapes``: dicts with
    ``in_channels, out_channels, kernel_size, num_tickets, input_size`` and optional ``stride,
    padding, dilation, groups, bias, channels_last``. ``rows`` are the batch sizes (rows for
    linear, images for conv) to exercise: include every decode size class you serve. Returns
    the number of calls made.
    """
    dev = torch.device(device)
    if not is_available(dev):
        raise ValueError(f"device: the triton backend is not available on {dev}")
    calls = 0
    row_list = sorted({int(r) for r in rows})
    for dtype in dtypes:
        for shape in linear_shapes:
            kin, n, k = (int(v) for v in shape[:3])
            has_bias = bool(shape[3]) if len(shape) > 3 else True
            w = torch.randn(n, kin, device=dev, dtype=dtype)
            bias = torch.zeros(n, device=dev, dtype=dtype) if has_bias else None
            masks = PackedMasks.trusted(ones_bits(k, (n, kin), dev), (n, kin))
            for m in row_list:
                x = torch.randn(m, kin, device=dev, dtype=dtype)
                plan = _warm_routes(m, k, dev)
                y = linear_forward(x, w, masks, plan, bias)
                if backward:
                    linear_backward(y, x, w, masks, plan, True, True)
                calls += 1
        for spec in conv_shapes:
            calls += _warm_conv(spec, dtype, row_list, dev, backward)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    logger.info("triton warmup: %d calls", calls)
    return calls


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _warm_conv(spec: dict, dtype: torch.dtype, row_list: list[int], dev: torch.device, backward: bool) -> int:
    kh, kw = _pair(spec["kernel_size"])
    groups = int(spec.get("groups", 1))
    params = ConvParams(_pair(spec.get("stride", 1)), _pair(spec.get("padding", 0)), _pair(spec.get("dilation", 1)), groups)
    ci, co, k = int(spec["in_channels"]), int(spec["out_channels"]), int(spec["num_tickets"])
    h, w_ = _pair(spec["input_size"])
    weight = torch.randn(co, ci // groups, kh, kw, device=dev, dtype=dtype)
    bias = torch.zeros(co, device=dev, dtype=dtype) if spec.get("bias", True) else None
    masks = PackedMasks.trusted(ones_bits(k, weight.shape, dev), weight.shape)
    fmt = torch.channels_last if spec.get("channels_last", True) else torch.contiguous_format
    for b in row_list:
        x = torch.randn(b, ci, h, w_, device=dev, dtype=dtype).contiguous(memory_format=fmt)
        plan = _warm_routes(b, k, dev)
        y = conv2d_forward(x, weight, masks, plan, bias, params)
        if backward:
            conv2d_backward(y, x, weight, masks, plan, params, True, True)
    return len(row_list)


register_backend(
    Backend(
        name="triton",
        is_available=is_available,
        priority=priority,
        supports=supports,
        linear_forward=linear_forward,
        linear_backward=linear_backward,
        conv2d_forward=conv2d_forward,
        conv2d_backward=conv2d_backward,
    )
)
