// Torch binding of the CUDA routed GEMV (compiled only with a CUDA build of torch): argument
// checks on the host (shapes, dtypes, devices, contiguity, row limit) before the launch.
#include <torch/extension.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "routed_gemv.h"

namespace {

void check_cuda(const at::Tensor& t, const char* name, int64_t dim, const at::Device& device) {
  TORCH_CHECK_VALUE(t.device() == device, name, ": expected a tensor on ", device, ", got one on ", t.device());
  TORCH_CHECK_VALUE(t.dim() == dim, name, ": expected a ", dim, "-D tensor, got ", t.dim(), "-D");
  TORCH_CHECK_VALUE(t.is_contiguous(), name, ": expected a contiguous tensor, got strides ", t.strides());
}

int dtype_id(at::ScalarType t) {
  if (t == at::kHalf) return rtl_cuda::kFloat16;
  if (t == at::kBFloat16) return rtl_cuda::kBFloat16;
  if (t == at::kFloat) return rtl_cuda::kFloat32;
  TORCH_CHECK_TYPE(false, "x: expected dtype float16, bfloat16 or float32, got ", t);
  return -1;
}

at::Tensor forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bits, const at::Tensor& perm, const at::Tensor& offsets,
                   const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(x.is_cuda(), "x: expected a CUDA tensor, got one on ", x.device());
  const at::Device dev = x.device();
  check_cuda(x, "x", 2, dev);
  check_cuda(weight, "weight", 2, dev);
  check_cuda(bits, "bits", 3, dev);
  check_cuda(perm, "perm", 1, dev);
  check_cuda(offsets, "offsets", 1, dev);
  const int dt = dtype_id(x.scalar_type());
  TORCH_CHECK_TYPE(weight.scalar_type() == x.scalar_type(), "weight: expected dtype ", x.scalar_type(), " (the dtype of x), got ", weight.scalar_type());
  TORCH_CHECK_TYPE(bits.scalar_type() == at::kInt, "bits: expected dtype int32, got ", bits.scalar_type());
  TORCH_CHECK_TYPE(perm.scalar_type() == at::kLong && offsets.scalar_type() == at::kLong, "perm, offsets: expected dtype int64, got ", perm.scalar_type(),
                   " and ", offsets.scalar_type());
  const int64_t M = x.size(0), C = x.size(1), N = weight.size(0), K = bits.size(0);
  TORCH_CHECK_VALUE(weight.size(1) == C, "weight: expected shape [N, ", C, "] (in_features of x), got ", weight.sizes());
  TORCH_CHECK_VALUE(K >= 1 && bits.size(1) == N && bits.size(2) == (C + 31) / 32, "bits: expected shape [K, ", N, ", ", (C + 31) / 32, "], got ", bits.sizes());
  TORCH_CHECK_VALUE(perm.size(0) == M, "perm: expected shape [", M, "], got ", perm.sizes());
  TORCH_CHECK_VALUE(offsets.size(0) == K + 1, "offsets: expected shape [", K + 1, "], got ", offsets.sizes());
  TORCH_CHECK_VALUE(M <= rtl_cuda::kMaxRows, "x: expected at most ", rtl_cuda::kMaxRows, " rows for the CUDA decode kernel, got ", M);
  const void* bias_ptr = nullptr;
  if (bias.has_value() && bias->defined()) {
    check_cuda(*bias, "bias", 1, dev);
    TORCH_CHECK_TYPE(bias->scalar_type() == x.scalar_type(), "bias: expected dtype ", x.scalar_type(), ", got ", bias->scalar_type());
    TORCH_CHECK_VALUE(bias->size(0) == N, "bias: expected shape [", N, "], got ", bias->sizes());
    bias_ptr = bias->data_ptr();
  }
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const c10::cuda::CUDAGuard guard(dev);
  const cudaError_t err = rtl_cuda::launch_routed_gemv(dt, x.data_ptr(), weight.data_ptr(), reinterpret_cast<const uint32_t*>(bits.data_ptr<int32_t>()),
                                                       perm.data_ptr<int64_t>(), offsets.data_ptr<int64_t>(), bias_ptr, y.data_ptr(), M, N, C, K,
                                                       at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "routed_gemv launch failed: ", cudaGetErrorString(err));
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rtl_kernels CUDA kernels: routed masked GEMV for small batches (weight read once per call)";
  m.def("forward", &forward, "y = x @ (W & mask[route])^T + b for up to 64 rows", py::arg("x"), py::arg("weight"), py::arg("bits"), py::arg("perm"),
        py::arg("offsets"), py::arg("bias") = py::none());
  m.attr("max_rows") = rtl_cuda::kMaxRows;
}
