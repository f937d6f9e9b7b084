// Python binding of the cuda_mma kernel (compiled by the host C++ compiler through torch.utils.cpp_extension):
// checks the inputs, allocates the output and launches on the current stream. The kernel is in attention.cu.
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>

#include <cmath>

cudaError_t avo_cuda_mma_forward(const void* q, const void* k, const void* v, void* o, bool is_bf16, int batch,
                                 int seqlen, int heads_q, int heads_kv, int head_dim, bool causal,
                                 float scale_log2, cudaStream_t stream);

namespace {

// The kernel reads rows with 16-byte loads: storage must start 16-byte aligned (fresh allocations are).
torch::Tensor aligned(const torch::Tensor& t) {
    torch::Tensor c = t.contiguous();
    return reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 == 0 ? c : c.clone();
}

torch::Tensor forward(torch::Tensor q, torch::Tensor k, torch::Tensor v, bool causal, double sm_scale) {
    TORCH_CHECK(q.is_cuda() && k.is_cuda() && v.is_cuda(), "cuda_mma needs CUDA tensors");
    TORCH_CHECK(q.device() == k.device() && q.device() == v.device(), "q, k, v must be on one device");
    TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
                "q, k, v must have one dtype");
    TORCH_CHECK(q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16,
                "cuda_mma supports float16 and bfloat16, got ", q.scalar_type());
    TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "q, k, v must be (batch, seqlen, heads, head_dim)");
    const int64_t batch = q.size(0), seqlen = q.size(1), heads_q = q.size(2), head_dim = q.size(3);
    const int64_t heads_kv = k.size(2);
    TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == batch && k.size(1) == seqlen && k.size(3) == head_dim,
                "k and v must be (batch, seqlen, heads_kv, head_dim) matching q");
    TORCH_CHECK(heads_kv > 0 && heads_q % heads_kv == 0, "heads_q must be a multiple of heads_kv");
    TORCH_CHECK(head_dim == 64 || head_dim == 128, "cuda_mma supports head_dim 64 and 128, got ", head_dim);
    TORCH_CHECK(batch * heads_q <= 65535, "batch * heads_q must be at most 65535");

    c10::cuda::CUDAGuard guard(q.device());
    q = aligned(q);
    k = aligned(k);
    v = aligned(v);
    torch::Tensor o = torch::empty_like(q);
    if (q.numel() == 0) return o;
    const float scale_log2 = static_cast<float>(sm_scale * 1.4426950408889634);
    const cudaError_t err = avo_cuda_mma_forward(
        q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), q.scalar_type() == at::kBFloat16,
        static_cast<int>(batch), static_cast<int>(seqlen), static_cast<int>(heads_q), static_cast<int>(heads_kv),
        static_cast<int>(head_dim), causal, scale_log2, at::cuda::getCurrentCUDAStream());
    TORCH_CHECK(err == cudaSuccess, "cuda_mma kernel launch failed: ", cudaGetErrorString(err));
    return o;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("forward", &forward, "attention forward (q, k, v, causal, sm_scale) -> o",
          pybind11::arg("q"), pybind11::arg("k"), pybind11::arg("v"), pybind11::arg("causal"),
          pybind11::arg("sm_scale"));
}
