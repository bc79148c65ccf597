// optspec multi-tensor runtime: the hand-written, rule-independent half of every generated kernel.
//
// A generated rule (see impls/cuda/codegen.py) is a traits struct K with
//   K::NS   tensor state slots (float32), K::NSS per-tensor scalar state slots (double),
//   K::NR   per-tensor reductions, K::NHS / K::NHS_INIT host scalars of the step / init program,
//   K::coef<PASS>(...)   per-tensor prelude in double: reductions finalised, scalar state updated,
//                        every scalar that meets a tensor rounded once to float32;
//   K::elem<PASS>(...)   the elementwise body of one element in float32;
//   K::loads_*(PASS)     which inputs a pass reads (a pass never reads what it does not use).
// Passes: OPTSPEC_INIT (-1) initialises the state, OPTSPEC_STEP (0) is the step, L >= 1 is the
// reduction pass of level L (norms that the step needs before its elementwise part).
//
// Everything below the device-only section is __host__ __device__: the CPU driver that CI runs
// (optspec_host_pass) executes exactly the chunk loop and element bodies the GPU kernel executes,
// one "lane" (thread) after another. Only the launch, the block reduction and the atomics are
// device-only.
//
// Work list: tensor i has numel[i] elements and the 2 + NS pointers ptrs[i*(2+NS) + ...] =
// {theta, grad, state_0, ...}. chunks[2*c], chunks[2*c+1] = (tensor, start) of chunk c; a chunk
// holds min(chunk_size, numel - start) elements and never spans two tensors. chunk_size is a
// multiple of 4, so a chunk is 16-byte aligned (float32) whenever its tensor's pointers are, and
// then every pointer is read and written with 128-bit (float32) or 64-bit (4 x bfloat16) vector
// accesses; otherwise element by element.
#pragma once

#include <stdint.h>

#include <cmath>
#include <cstring>

#ifdef __CUDACC__
#define OPTSPEC_HD __host__ __device__ __forceinline__
#else
#define OPTSPEC_HD inline
#endif

#define OPTSPEC_INIT (-1)
#define OPTSPEC_STEP 0
#define OPTSPEC_DTYPE_F32 0
#define OPTSPEC_DTYPE_BF16 1
#define OPTSPEC_RED_SUM 0
#define OPTSPEC_RED_MAX 1

namespace optspec {

typedef unsigned short bf16;

// ------------------------------------------------------------------ scalar helpers (numpy semantics)

OPTSPEC_HD float bits_to_float(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

OPTSPEC_HD uint32_t float_to_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

OPTSPEC_HD float bf16_to_float(bf16 h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

// Round to nearest, ties to even; NaN stays a (quiet) NaN.
OPTSPEC_HD bf16 float_to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<bf16>((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<bf16>(u >> 16);
}

// numpy.maximum / numpy.minimum propagate NaN (fmaxf would drop it).
template <class T>
OPTSPEC_HD T maximum(T a, T b) {
  return (a != a) ? a : ((b != b) ? b : (a > b ? a : b));
}
template <class T>
OPTSPEC_HD T minimum(T a, T b) {
  return (a != a) ? a : ((b != b) ? b : (a < b ? a : b));
}
// numpy.sign: -1, 0 or 1, NaN for NaN.
template <class T>
OPTSPEC_HD T sign(T x) {
  return (x > T(0)) ? T(1) : ((x < T(0)) ? T(-1) : x);
}
template <class T>
OPTSPEC_HD T square(T x) {
  return x * x;
}

// ------------------------------------------------------------------ storage: scalar and 4-wide vector access

struct alignas(16) F32x4 {
  float v[4];
};
struct alignas(8) BF16x4 {
  bf16 v[4];
};

// The work list holds plain integers; OPTSPEC_GLOBAL(p) tells the compiler that p addresses
// global memory, so that it emits ld.global / st.global (and their 128-bit vector forms)
// instead of generic accesses.
#ifdef __CUDA_ARCH__
#define OPTSPEC_GLOBAL(p) __builtin_assume(__isGlobal(p))
#else
#define OPTSPEC_GLOBAL(p) ((void)0)
#endif

template <class T>
struct Storage;

template <>
struct Storage<float> {
  static constexpr int vector_bytes = 16;
  static OPTSPEC_HD float load(const float* p, long long i) {
    OPTSPEC_GLOBAL(p);
    return p[i];
  }
  static OPTSPEC_HD void store(float* p, long long i, float x) {
    OPTSPEC_GLOBAL(p);
    p[i] = x;
  }
  static OPTSPEC_HD void load4(const float* p, long long i, float* out) {
    OPTSPEC_GLOBAL(p);
    const F32x4 x = *reinterpret_cast<const F32x4*>(p + i);
    out[0] = x.v[0];
    out[1] = x.v[1];
    out[2] = x.v[2];
    out[3] = x.v[3];
  }
  static OPTSPEC_HD void store4(float* p, long long i, const float* in) {
    OPTSPEC_GLOBAL(p);
    F32x4 x;
    x.v[0] = in[0];
    x.v[1] = in[1];
    x.v[2] = in[2];
    x.v[3] = in[3];
    *reinterpret_cast<F32x4*>(p + i) = x;
  }
};

template <>
struct Storage<bf16> {
  static constexpr int vector_bytes = 8;
  static OPTSPEC_HD float load(const bf16* p, long long i) {
    OPTSPEC_GLOBAL(p);
    return bf16_to_float(p[i]);
  }
  static OPTSPEC_HD void store(bf16* p, long long i, float x) {
    OPTSPEC_GLOBAL(p);
    p[i] = float_to_bf16(x);
  }
  static OPTSPEC_HD void load4(const bf16* p, long long i, float* out) {
    OPTSPEC_GLOBAL(p);
    const BF16x4 x = *reinterpret_cast<const BF16x4*>(p + i);
    out[0] = bf16_to_float(x.v[0]);
    out[1] = bf16_to_float(x.v[1]);
    out[2] = bf16_to_float(x.v[2]);
    out[3] = bf16_to_float(x.v[3]);
  }
  static OPTSPEC_HD void store4(bf16* p, long long i, const float* in) {
    OPTSPEC_GLOBAL(p);
    BF16x4 x;
    x.v[0] = float_to_bf16(in[0]);
    x.v[1] = float_to_bf16(in[1]);
    x.v[2] = float_to_bf16(in[2]);
    x.v[3] = float_to_bf16(in[3]);
    *reinterpret_cast<BF16x4*>(p + i) = x;
  }
};

template <int N>
struct Doubles {
  double v[N > 0 ? N : 1];
};

OPTSPEC_HD bool aligned_to(uint64_t address, int bytes) { return (address % static_cast<uint64_t>(bytes)) == 0; }

OPTSPEC_HD void accumulate(double* acc, int op, double x) {
  if (op == OPTSPEC_RED_SUM) {
    *acc += x;
  } else {
    const double a = x < 0 ? -x : x;
    if (a != a || a > *acc) *acc = a;  // NaN wins, as in numpy.max
  }
}

// ------------------------------------------------------------------ one chunk, one lane

// Lane `lane` of `lanes` processes elements lane, lane + lanes, ... of the chunk (vector items
// first, then the scalar tail). Pass PASS decides what is loaded, computed and stored.
template <class K, class PT, class GT, int PASS>
OPTSPEC_HD void chunk_body(const uint64_t* ptrs, long long start, long long len, const typename K::Coef& c, long long lane,
                           long long lanes, double* acc) {
  constexpr int NS = K::NS;
  constexpr int NSV = NS > 0 ? NS : 1;
  constexpr bool store_theta = PASS == OPTSPEC_STEP;
  constexpr bool store_state = PASS == OPTSPEC_STEP || PASS == OPTSPEC_INIT;
  PT* theta = reinterpret_cast<PT*>(static_cast<uintptr_t>(ptrs[0])) + start;
  const GT* grad = reinterpret_cast<const GT*>(static_cast<uintptr_t>(ptrs[1])) + start;
  float* state[NSV];
  bool aligned = aligned_to(reinterpret_cast<uintptr_t>(theta), Storage<PT>::vector_bytes);
  if (K::loads_grad(PASS)) aligned = aligned && aligned_to(reinterpret_cast<uintptr_t>(grad), Storage<GT>::vector_bytes);
  for (int j = 0; j < NS; ++j) {
    state[j] = reinterpret_cast<float*>(static_cast<uintptr_t>(ptrs[2 + j])) + start;
    aligned = aligned && aligned_to(reinterpret_cast<uintptr_t>(state[j]), 16);
  }
  const long long nvec = aligned ? len / 4 : 0;
  for (long long v = lane; v < nvec; v += lanes) {
    const long long i = 4 * v;
    float th[4] = {0.f, 0.f, 0.f, 0.f}, gr[4] = {0.f, 0.f, 0.f, 0.f}, st[NSV][4];
    if (K::loads_theta(PASS)) Storage<PT>::load4(theta, i, th);
    if (K::loads_grad(PASS)) Storage<GT>::load4(grad, i, gr);
    for (int j = 0; j < NS; ++j) {
      if (K::loads_state(PASS, j)) {
        Storage<float>::load4(state[j], i, st[j]);
      } else {
        st[j][0] = st[j][1] = st[j][2] = st[j][3] = 0.f;
      }
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      float s[NSV];
      for (int j = 0; j < NS; ++j) s[j] = st[j][k];
      K::template elem<PASS>(c, th[k], gr[k], s, acc);
      for (int j = 0; j < NS; ++j) st[j][k] = s[j];
    }
    if (store_theta) Storage<PT>::store4(theta, i, th);
    if (store_state) {
      for (int j = 0; j < NS; ++j) Storage<float>::store4(state[j], i, st[j]);
    }
  }
  for (long long i = 4 * nvec + lane; i < len; i += lanes) {
    float th = 0.f, gr = 0.f, s[NSV];
    if (K::loads_theta(PASS)) th = Storage<PT>::load(theta, i);
    if (K::loads_grad(PASS)) gr = Storage<GT>::load(grad, i);
    for (int j = 0; j < NS; ++j) s[j] = K::loads_state(PASS, j) ? Storage<float>::load(state[j], i) : 0.f;
    K::template elem<PASS>(c, th, gr, s, acc);
    if (store_theta) Storage<PT>::store(theta, i, th);
    if (store_state) {
      for (int j = 0; j < NS; ++j) Storage<float>::store(state[j], i, s[j]);
    }
  }
}

// The per-chunk prologue shared by host and device: where the chunk is, and its coefficients.
template <class K, int PASS>
OPTSPEC_HD void chunk_setup(const long long* numel, const long long* chunks, long long ci, long long chunk_size,
                            const double* hs, const double* red, const double* ps_in, typename K::Coef& c, double* ps_new,
                            long long& tensor, long long& start, long long& len) {
  tensor = chunks[2 * ci];
  start = chunks[2 * ci + 1];
  const long long n = numel[tensor];
  len = n - start < chunk_size ? n - start : chunk_size;
  if (len < 0) len = 0;
  K::template coef<PASS>(hs, red + tensor * (K::NR > 0 ? K::NR : 1), ps_in + tensor * (K::NSS > 0 ? K::NSS : 1), n, c,
                         ps_new);
}

// ------------------------------------------------------------------ host emulation (CI, no GPU)

#ifndef __CUDACC__
// Runs one pass on the CPU exactly as the kernel would: every chunk, every lane in turn; a
// lane's reduction partials are combined as the block reduction would combine them.
template <class K, class PT, class GT, int PASS>
void host_pass(const uint64_t* ptrs, const long long* numel, const long long* chunks, long long nchunks,
               long long chunk_size, const double* hs, double* red, const double* ps_in, double* ps_out, long long lanes) {
  constexpr int NR = K::NR > 0 ? K::NR : 1;
  constexpr int NSS = K::NSS > 0 ? K::NSS : 1;
  for (long long ci = 0; ci < nchunks; ++ci) {
    typename K::Coef c;
    double ps_new[NSS] = {0.0};
    long long tensor, start, len;
    chunk_setup<K, PASS>(numel, chunks, ci, chunk_size, hs, red, ps_in, c, ps_new, tensor, start, len);
    if ((PASS == OPTSPEC_STEP || PASS == OPTSPEC_INIT) && start == 0) {
      for (int j = 0; j < K::NSS; ++j) ps_out[tensor * NSS + j] = ps_new[j];
    }
    for (long long lane = 0; lane < lanes; ++lane) {
      double acc[NR];
      for (int k = 0; k < NR; ++k) acc[k] = 0.0;
      chunk_body<K, PT, GT, PASS>(ptrs + tensor * (2 + K::NS), start, len, c, lane, lanes, acc);
      if (PASS > 0) {
        for (int k = 0; k < K::NR; ++k) {
          if (K::reduce_level(k) == PASS) {
            double* slot = red + tensor * NR + k;
            if (K::reduce_op(k) == OPTSPEC_RED_SUM) {
              *slot += acc[k];
            } else if (acc[k] != acc[k] || acc[k] > *slot) {
              *slot = acc[k];
            }
          }
        }
      }
    }
  }
}
#endif

// ------------------------------------------------------------------ device: kernel, block reduction, launch

#ifdef __CUDACC__
#ifndef OPTSPEC_THREADS
#define OPTSPEC_THREADS 512
#endif

__device__ __forceinline__ double block_reduce(double x, int op, double* shared) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    const double y = __shfl_down_sync(0xffffffffu, x, offset);
    x = op == OPTSPEC_RED_SUM ? x + y : ((y != y || y > x) ? y : x);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // the shared buffer may still be read from the previous reduction
  if (lane == 0) shared[warp] = x;
  __syncthreads();
  if (warp == 0) {
    x = lane < static_cast<int>(blockDim.x / 32) ? shared[lane] : 0.0;
    for (int offset = 16; offset > 0; offset >>= 1) {
      const double y = __shfl_down_sync(0xffffffffu, x, offset);
      x = op == OPTSPEC_RED_SUM ? x + y : ((y != y || y > x) ? y : x);
    }
  }
  return x;
}

// Non-negative doubles (and NaN, whose bits are larger than +inf's) order like their bits.
__device__ __forceinline__ void atomic_max_nonneg(double* address, double x) {
  atomicMax(reinterpret_cast<unsigned long long*>(address), static_cast<unsigned long long>(__double_as_longlong(x)));
}

template <class K, class PT, class GT, int PASS, int NH>
__global__ void __launch_bounds__(OPTSPEC_THREADS)
    multi_tensor_kernel(const uint64_t* __restrict__ ptrs, const long long* __restrict__ numel,
                        const long long* __restrict__ chunks, long long nchunks, long long chunk_size, Doubles<NH> hs,
                        double* red, const double* ps_in, double* ps_out) {
  constexpr int NR = K::NR > 0 ? K::NR : 1;
  constexpr int NSS = K::NSS > 0 ? K::NSS : 1;
  __shared__ double shared[32];
  for (long long ci = blockIdx.x; ci < nchunks; ci += gridDim.x) {
    typename K::Coef c;
    double ps_new[NSS] = {0.0};
    long long tensor, start, len;
    chunk_setup<K, PASS>(numel, chunks, ci, chunk_size, hs.v, red, ps_in, c, ps_new, tensor, start, len);
    if ((PASS == OPTSPEC_STEP || PASS == OPTSPEC_INIT) && start == 0 && threadIdx.x == 0) {
      for (int j = 0; j < K::NSS; ++j) ps_out[tensor * NSS + j] = ps_new[j];
    }
    double acc[NR];
    for (int k = 0; k < NR; ++k) acc[k] = 0.0;
    chunk_body<K, PT, GT, PASS>(ptrs + tensor * (2 + K::NS), start, len, c, threadIdx.x, blockDim.x, acc);
    if constexpr (PASS > 0) {
      for (int k = 0; k < K::NR; ++k) {
        if (K::reduce_level(k) != PASS) continue;
        const double total = block_reduce(acc[k], K::reduce_op(k), shared);
        if (threadIdx.x == 0) {
          if (K::reduce_op(k) == OPTSPEC_RED_SUM) {
            atomicAdd(red + tensor * NR + k, total);
          } else {
            atomic_max_nonneg(red + tensor * NR + k, total);
          }
        }
      }
    }
  }
}

template <class K, class PT, class GT, int PASS, int NH>
cudaError_t launch_pass(const uint64_t* ptrs, const long long* numel, const long long* chunks, long long nchunks,
                        long long chunk_size, const double* hs_host, double* red, const double* ps_in, double* ps_out,
                        cudaStream_t stream) {
  if (nchunks <= 0) return cudaSuccess;
  Doubles<NH> hs;
  for (int k = 0; k < NH; ++k) hs.v[k] = hs_host[k];
  const long long blocks = nchunks < 65535 ? nchunks : 65535;
  multi_tensor_kernel<K, PT, GT, PASS, NH><<<static_cast<unsigned>(blocks), OPTSPEC_THREADS, 0, stream>>>(
      ptrs, numel, chunks, nchunks, chunk_size, hs, red, ps_in, ps_out);
  return cudaGetLastError();
}
#endif

}  // namespace optspec
