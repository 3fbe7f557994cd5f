// Helpers shared by every zfraw CUDA kernel source.
//
// kernels/cuda.py pastes this header in front of each .cu file before it hands
// the text to cupy.RawModule (NVRTC), so the sources need no include path and
// no host headers.  Everything here is templated on, or overloaded for, the
// element type T (float or double) and the index type I (int or long long):
// nothing hard-codes float.

#ifndef ZFRAW_COMMON_CUH
#define ZFRAW_COMMON_CUH

// A grid-stride loop over the flat indices [0, n): the counter is 64-bit, so
// it cannot overflow whatever the launch size, and any grid covers any n.
#define ZF_GRID_STRIDE_LOOP(i, n)                                              \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;       \
         i < (n); i += (long long)blockDim.x * gridDim.x)

template <typename I>
__device__ __forceinline__ I zf_min(I a, I b) { return a < b ? a : b; }

template <typename I>
__device__ __forceinline__ I zf_max(I a, I b) { return a > b ? a : b; }

// -infinity in T (the max-pool start value: padding never wins).
__device__ __forceinline__ void zf_set_neg_inf(float& v) { v = -__int_as_float(0x7f800000); }
__device__ __forceinline__ void zf_set_neg_inf(double& v) { v = -__longlong_as_double(0x7ff0000000000000LL); }

template <typename T>
__device__ __forceinline__ T zf_neg_inf() { T v; zf_set_neg_inf(v); return v; }

// a ** b in T's own precision (powf for float, pow for double).
__device__ __forceinline__ float zf_pow(float a, float b) { return powf(a, b); }
__device__ __forceinline__ double zf_pow(double a, double b) { return pow(a, b); }

// *address += v, atomically.  atomicAdd on double needs sm_60; older devices
// get the usual compare-and-swap loop (compiled everywhere, used only there).
__device__ __forceinline__ void zf_atomic_add_cas(double* address, double v) {
    unsigned long long* bits = (unsigned long long*)address;
    unsigned long long old = *bits, assumed;
    do {
        assumed = old;
        old = atomicCAS(bits, assumed,
                        (unsigned long long)__double_as_longlong(v + __longlong_as_double((long long)assumed)));
    } while (assumed != old);
}

__device__ __forceinline__ void zf_atomic_add(float* address, float v) { atomicAdd(address, v); }

__device__ __forceinline__ void zf_atomic_add(double* address, double v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 600
    zf_atomic_add_cas(address, v);
#else
    atomicAdd(address, v);
#endif
}

#endif  // ZFRAW_COMMON_CUH
