"""One declaration per routed op: :func:`define_routed_op` turns a spec into everything the op needs.

From a forward body, its fake and its backward body it registers, in the ``rtl_kernels``
``torch.library`` namespace (the shape of vLLM's ``direct_register_custom_op``: one call per op,
everything else generated):

- the forward custom op ``torch.ops.rtl_kernels.<name>`` (schema inferred from the forward's type
  hints) and its fake kernel, so ``torch.compile`` traces through it;
- the backward custom op ``torch.ops.rtl_kernels.<name>_backward`` with its fake kernel, and the
  autograd formula that calls it (a non-traceable backward must be an op of its own);
- autocast rules for every device type with autocast: floating inputs other than float64 are
  cast to the autocast dtype and the op runs with autocast off, as ``F.linear``/``F.conv2d`` do;
- the eager fast path (:meth:`RoutedOp.__call__`): the same forward and backward bodies run
  directly (inference) or through one generated ``autograd.Function``, skipping the dispatcher's
  overhead, with the same autocast rule. Compile and eager paths call the same two functions,
  so they cannot drift apart.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch

Tensor = torch.Tensor
NAMESPACE = "rtl_kernels"
# holds the autocast kernels (registrations live as long as this object)
_LIB = torch.library.Library(NAMESPACE, "FRAGMENT")
_RESERVED = ("dy", "needs")
_any_autocast = torch._C._is_any_autocast_enabled


def autocast_device_types() -> tuple[str, ...]:
    """Device types this torch build has autocast for (each gets the rule, not only CPU)."""
    return tuple(d for d in ("cpu", "cuda", "xpu", "mps", "hpu") if torch.amp.is_autocast_available(d))


def autocast_args(args: Sequence[object], device_type: str) -> tuple[object, ...]:
    """``args`` with every floating tensor on ``device_type`` other than float64 cast to that
    device's autocast dtype (autocast's own eligibility rule for lower-precision ops)."""
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(
        a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point() and a.dtype != torch.float64 and a.device.type == device_type else a
        for a in args
    )


def autocast_inputs(*args: object) -> tuple[object, ...]:
    """``args`` cast by :func:`autocast_args` when autocast is on for the first one's device.

    Public entry points call it before their dtype checks, so a float32 weight meets the
    bfloat16 activations of an autocast region as it does in ``F.linear``.
    """
    if _any_autocast():  # one cheap call on the common path (no autocast anywhere)
        device_type = args[0].device.type
        if torch.is_autocast_enabled(device_type):
            return autocast_args(args, device_type)
    return args


def _no_double_backward(op: str) -> Callable[..., tuple[Tensor | None, ...]]:
    """Autograd of a backward op: differentiating a gradient again is not supported, and says so
    (the kernels' gradients are not themselves differentiable; a silent zero would be wrong)."""

    def backward(ctx, *grads: Tensor) -> tuple[Tensor | None, ...]:
        raise NotImplementedError(
            f"{op}: double backward is not supported (the gradient of a gradient, e.g. torch.autograd.grad(..., "
            "create_graph=True) followed by another backward); first-order gradients are"
        )

    return backward


class RoutedOp:
    """A declared routed op; call it like the forward body (see :func:`define_routed_op`).

    ``op`` / ``backward_op`` are the ``torch.library`` ops (``torch.ops.rtl_kernels.<name>`` and
    ``<name>_backward``); ``forward`` / ``backward`` the bodies they run.
    """

    def __init__(
        self,
        name: str,
        forward: Callable[..., Tensor],
        fake: Callable[..., Tensor],
        backward: Callable[..., Sequence[Tensor | None]] | None,
        differentiable: Sequence[str],
        grad_fake: Callable[..., Sequence[Tensor]] | None,
        autocast: bool,
    ) -> None:
        self.name = name
        self.forward = forward
        self.backward = backward
        params = list(inspect.signature(forward).parameters)
        unknown = [d for d in differentiable if d not in params]
        if unknown:
            raise ValueError(f"differentiable: expected names of {name}'s forward parameters {params}, got {unknown}")
        clash = [p for p in params if p in _RESERVED]
        if clash:
            raise ValueError(f"forward: parameter names {list(_RESERVED)} are reserved for the backward op, got {clash}")
        if differentiable and backward is None:
            raise ValueError(f"backward: {name} declares differentiable inputs {list(differentiable)} but no backward")
        self._diff = tuple(params.index(d) for d in differentiable)
        self.op = torch.library.custom_op(f"{NAMESPACE}::{name}", forward, mutates_args=())
        self.op.register_fake(fake)
        self.backward_op = None
        if self._diff:
            self.backward_op = self._define_backward(grad_fake)
            self.backward_op.register_autograd(_no_double_backward(name))
            self.op.register_autograd(self._op_backward, setup_context=self._setup)
            self._function = type(
                f"{name}_function",
                (torch.autograd.Function,),
                {"forward": staticmethod(self._function_forward), "backward": staticmethod(self._eager_backward)},
            )
        self._autocast = autocast
        if autocast:
            for device_type in autocast_device_types():
                self._register_autocast(device_type)

    # ------------------------------------------------------------------ eager fast path

    def __call__(self, *args: object) -> Tensor:
        """The custom op while ``torch.compile`` traces; otherwise the bodies directly (no gradient
        wanted) or through the generated ``autograd.Function``, after the autocast cast."""
        if torch.compiler.is_compiling():
            return self.op(*args)
        if self._autocast and _any_autocast():
            device_type = args[0].device.type
            if torch.is_autocast_enabled(device_type):
                with torch.autocast(device_type, enabled=False):
                    return self._eager(autocast_args(args, device_type))
        return self._eager(args)

    def _eager(self, args: Sequence[object]) -> Tensor:
        if self._diff and torch.is_grad_enabled():
            for i in self._diff:
                a = args[i]
                if a is not None and a.requires_grad:
                    return self._function.apply(*args)
        return self.forward(*args)

    # ------------------------------------------------------------------ autograd

    @staticmethod
    def _setup(ctx, inputs: Sequence[object], output: object) -> None:
        ctx.tensor_slots = tuple(i for i, a in enumerate(inputs) if isinstance(a, Tensor))
        ctx.save_for_backward(*(inputs[i] for i in ctx.tensor_slots))
        ctx.inputs = [None if isinstance(a, Tensor) else a for a in inputs]

    @staticmethod
    def _restore(ctx) -> list[object]:
        args = list(ctx.inputs)
        for i, t in zip(ctx.tensor_slots, ctx.saved_tensors):
            args[i] = t
        return args

    def _needs(self, ctx) -> tuple[bool, ...]:
        return tuple(bool(ctx.needs_input_grad[i]) for i in self._diff)

    def _full_grads(self, ctx, grads: Sequence[Tensor | None], needs: tuple[bool, ...]) -> tuple[Tensor | None, ...]:
        out: list[Tensor | None] = [None] * len(ctx.needs_input_grad)
        for i, g, need in zip(self._diff, grads, needs):
            out[i] = g if need else None
        return tuple(out)

    def _function_forward(self, ctx, *args: object) -> Tensor:
        self._setup(ctx, args, None)
        return self.forward(*args)

    def _eager_backward(self, ctx, dy: Tensor) -> tuple[Tensor | None, ...]:
        needs = self._needs(ctx)
        if not any(needs):
            return (None,) * len(ctx.needs_input_grad)
        if torch.is_grad_enabled():  # create_graph=True: the backward op's autograd says double backward is unsupported
            return self._op_backward(ctx, dy)
        return self._full_grads(ctx, self.backward(dy, *self._restore(ctx), needs=needs), needs)

    def _op_backward(self, ctx, dy: Tensor) -> tuple[Tensor | None, ...]:
        needs = self._needs(ctx)
        if not any(needs):
            return (None,) * len(ctx.needs_input_grad)
        return self._full_grads(ctx, self.backward_op(dy, *self._restore(ctx), list(needs)), needs)

    def _define_backward(self, grad_fake: Callable[..., Sequence[Tensor]] | None):
        forward_schema = torch.library.infer_schema(self.forward, mutates_args=())
        params = forward_schema[1 : forward_schema.index(") -> ")]
        outs = ", ".join(["Tensor"] * len(self._diff))
        schema = f"(Tensor dy, {params}, bool[] needs) -> ({outs})"
        backward, diff = self.backward, self._diff

        def impl(dy: Tensor, *rest: object) -> tuple[Tensor, ...]:
            *args, needs = rest
            grads = backward(dy, *args, needs=tuple(needs))
            return tuple(g if need else dy.new_empty((0,)) for g, need in zip(grads, needs))

        def fake(dy: Tensor, *rest: object) -> tuple[Tensor, ...]:
            *args, needs = rest
            if grad_fake is not None:
                grads = grad_fake(dy, *args, needs=tuple(needs))
            else:
                grads = [torch.empty_like(args[i]) if need else None for i, need in zip(diff, needs)]
            return tuple(g if need else dy.new_empty((0,)) for g, need in zip(grads, needs))

        op = torch.library.custom_op(f"{NAMESPACE}::{self.name}_backward", impl, mutates_args=(), schema=schema)
        op.register_fake(fake)
        return op

    # ------------------------------------------------------------------ autocast

    def _register_autocast(self, device_type: str) -> None:
        key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        excluded = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))
        overload = self.op._opoverload

        def kernel(_keyset, *args: object) -> Tensor:
            cast = autocast_args(args, device_type)
            with torch._C._ExcludeDispatchKeyGuard(excluded):
                return overload(*cast)

        _LIB.impl(self.name, kernel, key, with_keyset=True)


def define_routed_op(
    name: str,
    forward: Callable[..., Tensor],
    *,
    fake: Callable[..., Tensor],
    backward: Callable[..., Sequence[Tensor | None]] | None = None,
    differentiable: Sequence[str] = (),
    grad_fake: Callable[..., Sequence[Tensor]] | None = None,
    autocast: bool = True,
) -> RoutedOp:
    """Declare the routed op ``torch.ops.rtl_kernels.<name>`` from one spec and return its caller.

    - ``forward(*args) -> Tensor``: the body. Fully type-annotated (tensors, ``Tensor | None``,
      ``int``, ``float``, ``bool``, ``str``, ``list[int]``); the op's schema is inferred from it.
      Inputs arrive already validated (the public function checked them); it resolves the backend
      and launches. Routing plans travel as their tensors (``routes, perm, offsets``).
    - ``fake(*args) -> Tensor``: an empty output of the right shape, dtype, device and strides.
    - ``differentiable``: forward parameter names that get gradients (tensors only).
    - ``backward(dy, *args, needs) -> grads``: one gradient per ``differentiable`` name, in that
      order; ``needs[i]`` says whether the i-th is wanted (return anything, e.g. ``None``, where
      it is not). It runs on the eager path directly and under compile as the backward op.
    - ``grad_fake(dy, *args, needs)``: fakes of those gradients, when ``torch.empty_like(input)``
      is not right (e.g. a channels_last rule); default ``empty_like``.
    - ``autocast``: register the F.linear-style autocast rule for every device type (default on).

    The returned :class:`RoutedOp` is called with the forward's positional arguments.

    Example, a seeded-weight linear whose weight is regenerated from ``(seed, layer)`` inside the
    kernel (gradient for ``x`` only)::

        def _seeded_forward(x: Tensor, bits: Tensor, routes: Tensor, perm: Tensor, offsets: Tensor,
                            bias: Tensor | None, out_features: int, seed: int, layer: int, scale: float,
                            backend: str) -> Tensor:
            return pick(backend, x).seeded_linear_forward(x, bits, plan(routes, perm, offsets), bias, ...)

        def _seeded_backward(dy, x, bits, routes, perm, offsets, bias, out_features, seed, layer, scale,
                             backend, *, needs):
            (need_dx,) = needs
            return (pick(backend, x).seeded_linear_grad_input(dy, bits, ...),)

        seeded_linear = define_routed_op(
            "seeded_linear", _seeded_forward, backward=_seeded_backward, differentiable=("x",),
            fake=lambda x, bits, *rest: x.new_empty((x.shape[0], rest[4])),  # rest[4] = out_features
        )
        y = seeded_linear(x2, bits, plan.routes, plan.perm, plan.offsets, bias, n, seed, layer, 1.0, "auto")

    and a masked-delta linear ``W_r = base + scales[r] * (delta ⊙ mask[r])`` with gradients for
    ``x``, ``delta`` and ``scales``: ``forward(x, base, delta, bits, scales, routes, perm, offsets,
    bias, backend)``, ``differentiable=("x", "delta", "scales")`` and a backward returning
    ``(dx, ddelta, dscales)``. Both then have compile, opcheck, autograd and autocast support.
    """
    return RoutedOp(name, forward, fake, backward, tuple(differentiable), grad_fake, autocast)
