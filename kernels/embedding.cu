// embedding.cu — token embedding gather.
//
// What is fused: the lookup, the widening of the stored table (f32, bf16 or
// f16) to the f32 residual stream and the family's scale (Gemma: √hidden,
// which the host rounds to the weight dtype as transformers does; else 1),
// in one pass. Nothing else reads the embedding rows, so there is no reason
// to materialise them in their stored type first. CPU twin: `embed` in
// src/backend/cpu/embed.rs.
//
// Launch: one block per token, threads stride over the hidden dimension.
// Token ids are checked against the vocabulary on the host before launch.
#include "common.cuh"

template <typename T>
__device__ void embedding(const uint32_t* __restrict__ tokens,  // [n]
                          const T* __restrict__ table,          // [vocab, hidden] T
                          float* __restrict__ out,              // [n, hidden] f32
                          int hidden, float scale) {
    const size_t row = blockIdx.x;
    const T* src = table + (size_t)tokens[row] * hidden;
    float* dst = out + row * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = to_f32(src[i]) * scale;
}

#define EMBEDDING(SUFFIX, T)                                                              \
    extern "C" __global__ void embedding_##SUFFIX(const uint32_t* tokens, const T* table, \
                                                  float* out, int hidden, float scale) {  \
        embedding<T>(tokens, table, out, hidden, scale);                                  \
    }
INSTANTIATE_T(EMBEDDING)
