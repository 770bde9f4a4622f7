"""Backend registry: remembered choices, and forgetting them when the set of backends changes."""

import torch

from rtl_kernels.backends import registry
from rtl_kernels.backends.registry import Backend, Call, register_backend, resolve_backend


def test_choices_are_remembered_and_forgotten_when_a_backend_registers():
    call = Call("linear", torch.device("cpu"), torch.float64, 3, (4, 5), 2)
    asked = []

    def supports(c: Call) -> bool:
        asked.append(c)
        return c.dtype == torch.float64

    first = resolve_backend("auto", call)
    assert first.name == "reference"  # nothing else runs float64 on CPU
    assert resolve_backend("auto", call) is first  # remembered
    fake = Backend(
        name="registry_test_fake",
        is_available=lambda device: device.type == "cpu",
        priority=lambda device: 10_000,
        supports=supports,
        linear_forward=lambda *a: None,
        linear_backward=lambda *a: None,
    )
    try:
        register_backend(fake)  # the new, higher-priority backend must be seen at once
        assert resolve_backend("auto", call) is fake and len(asked) == 1
        assert resolve_backend("auto", call) is fake and len(asked) == 1  # answered from memory
    finally:
        registry._BACKENDS.pop(fake.name)
        registry.forget_resolved()
    assert resolve_backend("auto", call).name == "reference"
