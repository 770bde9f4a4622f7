"""The Triton kernels compile for Hopper (sm_90) on a CPU-only machine: catches what the interpreter accepts but the compiler rejects.

Compilation runs in a subprocess without TRITON_INTERPRET (under the interpreter ``triton.jit``
yields interpreted functions). Integer arguments equal to 1 (unit strides) are passed as
constants and pointers/sizes marked 16-divisible, as Triton's runtime specialisation does for
contiguous tensors with sizes that are multiples of 16.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

triton = pytest.importorskip("triton")

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from rtl_kernels.kernels.triton.grouped_gemm import _dx_kernel, _fwd_kernel
    from rtl_kernels.kernels.triton.linear_decode import _decode_kernel
    from rtl_kernels.kernels.triton.weight_grad import _dw_kernel

    dt = sys.argv[1]
    lin = dict(KH=1, KW=1, SH=1, SW=1, PH=0, PW=0, DH=1, DW=1, IS_LINEAR=True)
    conv = dict(KH=3, KW=3, SH=2, SW=2, PH=1, PW=1, DH=1, DW=1, IS_LINEAR=False)
    ptr = {n: f"*{dt}" for n in ("x_ptr", "w_ptr", "bias_ptr", "y_ptr", "dy_ptr", "dx_ptr", "a_ptr", "out_ptr")}
    ptr.update({n: "*i32" for n in ("bits_ptr", "list_ptr", "count_ptr", "bt_ptr", "seg_end_ptr")})
    ptr.update({n: "*i64" for n in ("perm_ptr", "bs_ptr", "be_ptr", "st_ptr", "offsets_ptr")})
    ptr["flags_ptr"] = "*u8"
    blocks = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64)
    cases = [
        ("fwd-linear", _fwd_kernel, {**lin, **blocks, "USE_LIST": True, "WORD_TILES": True, "HAS_BIAS": True}, {}),
        ("fwd-conv", _fwd_kernel, {**conv, **blocks, "USE_LIST": False, "WORD_TILES": False, "HAS_BIAS": True}, {}),
        ("dx-linear", _dx_kernel, {**lin, **blocks, "USE_LIST": True, "WORD_TILES": True}, {}),
        ("dx-conv", _dx_kernel, {**conv, **blocks, "USE_LIST": False, "WORD_TILES": False}, {}),
        ("dw-linear", _dw_kernel, {**lin, **blocks, "USE_FLAGS": True, "PER_TICKET": False, "WORD_TILES": True}, {"out_ptr": "*fp32"}),
        ("dw-conv", _dw_kernel, {**conv, **blocks, "USE_FLAGS": False, "PER_TICKET": False, "WORD_TILES": True}, {"out_ptr": "*fp32"}),
        ("decode", _decode_kernel, dict(W_T=False, HAS_BIAS=True, USE_FLAGS=True, WORD_TILES=True, BLOCK_R=16, BLOCK_N=64, BLOCK_K=64), {}),
        ("decode-dx", _decode_kernel, dict(W_T=True, HAS_BIAS=False, USE_FLAGS=True, WORD_TILES=True, BLOCK_R=32, BLOCK_N=64, BLOCK_K=64), {}),
    ]
    unit = {"sxc", "syc"}
    sizes = {"sxb", "syb", "sxh", "syh", "sxw", "syw", "C_out", "R", "Cig", "Cog", "n_words", "RED", "OUT", "N_W", "KIN_W"}
    out = {}
    for name, fn, consts, extra in cases:
        consts = {**consts, **{n: 1 for n in unit if n in fn.arg_names}}
        types = {**ptr, **extra}
        sig = {n: "constexpr" if n in consts else types.get(n, "i32") for n in fn.arg_names}
        attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names) if n not in consts and (sig[n].startswith("*") or n in sizes)}
        k = triton.compile(ASTSource(fn, sig, constexprs=consts, attrs=attrs), target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, num_stages=3))
        ptx = k.asm["ptx"]
        out[name] = {"shared": k.metadata.shared, "wgmma": ptx.count("wgmma.mma_async"), "cp_async": ptx.count("cp.async")}
    print(json.dumps(out))
    """
)


def _nvidia_backend_present() -> bool:
    try:
        import triton.backends.nvidia  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _nvidia_backend_present(), reason="triton without its NVIDIA backend")
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_kernels_compile_for_sm90(dtype):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, dtype], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(report) == 8
    for name, info in report.items():
        assert info["wgmma"] > 0, f"{name} does not use Hopper tensor-core instructions: {info}"
        assert info["shared"] <= 232448, f"{name} needs more shared memory than an H100 has: {info}"
    # the grouped and weight-gradient loops are software-pipelined (asynchronous copies)
    for name in ("fwd-linear", "dx-linear", "dw-linear", "fwd-conv"):
        assert report[name]["cp_async"] > 0, f"{name} is not pipelined: {report[name]}"
