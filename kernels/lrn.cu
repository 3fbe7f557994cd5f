// Local response normalization across channels (Caffe / ONNX / PyTorch), and
// its gradient.
//
// T is the element type (float or double), I the index type (int when every
// array involved has fewer than 2**31 elements, else long long; chosen by
// kernels/cuda.py).  common.cuh is pasted in front of this file.
//
// For x (N, C, H, W), with before = size/2 and after = (size-1)/2 (PyTorch's
// window [c - before, c + after], zero beyond the channel edges):
//   scale_c = k + alpha/size * sum_{j in window(c)} x_j^2
//   y_c     = x_c * scale_c^-beta
// and for the gradient (c lies in window(j) exactly when j lies in
// [c - after, c + before]):
//   inner_j = dy_j * x_j * scale_j^-beta / scale_j
//   dx_c    = dy_c * scale_c^-beta
//             - 2 alpha beta / size * x_c * sum_{j in [c - after, c + before]} inner_j
// One thread per element; HW = H*W; channel c of the element at flat index idx
// is (idx / HW) % C, and its pixel column starts at idx - c*HW.

// sum_{j = c - lo_off}^{c + hi_off} a_j (channels outside [0, C) skipped), in
// ascending j, for the element whose column starts at col.
template <typename T, typename I>
__device__ __forceinline__ T zf_channel_sum(const T* __restrict__ a, I col, I c,
                                            I C, I HW, I lo_off, I hi_off) {
    const I j0 = zf_max(c - lo_off, I(0));
    const I j1 = zf_min(c + hi_off, C - 1);
    T s = T(0);
    for (I j = j0; j <= j1; ++j) s += a[col + j * HW];
    return s;
}

// scale_c = k + alpha_over_size * sum of x_j^2 over window(c).
template <typename T, typename I>
__device__ __forceinline__ T zf_lrn_scale(const T* __restrict__ x, I col, I c,
                                          I C, I HW, I before, I after, T k,
                                          T alpha_over_size) {
    const I j0 = zf_max(c - before, I(0));
    const I j1 = zf_min(c + after, C - 1);
    T s = T(0);
    for (I j = j0; j <= j1; ++j) {
        const T v = x[col + j * HW];
        s += v * v;
    }
    return k + alpha_over_size * s;
}

// y = x * scale^-beta.  total = N*C*H*W.
template <typename T, typename I>
__global__ void lrn_kernel(const T* __restrict__ x, T* __restrict__ y,
                           long long total, I C, I HW, I before, I after,
                           T alpha_over_size, T beta, T k) {
    ZF_GRID_STRIDE_LOOP(idx, total) {
        const I e = (I)idx;
        const I c = (e / HW) % C;
        const I col = e - c * HW;
        const T scale = zf_lrn_scale(x, col, c, C, HW, before, after, k, alpha_over_size);
        y[idx] = x[idx] * zf_pow(scale, -beta);
    }
}

// First pass of the gradient: scale_pow = scale^-beta and
// inner = dy * x * scale_pow / scale, both (N, C, H, W).  total = N*C*H*W.
template <typename T, typename I>
__global__ void lrn_backward_inner_kernel(const T* __restrict__ dy,
                                          const T* __restrict__ x,
                                          T* __restrict__ scale_pow,
                                          T* __restrict__ inner, long long total,
                                          I C, I HW, I before, I after,
                                          T alpha_over_size, T beta, T k) {
    ZF_GRID_STRIDE_LOOP(idx, total) {
        const I e = (I)idx;
        const I c = (e / HW) % C;
        const I col = e - c * HW;
        const T scale = zf_lrn_scale(x, col, c, C, HW, before, after, k, alpha_over_size);
        const T sp = zf_pow(scale, -beta);
        scale_pow[idx] = sp;
        inner[idx] = dy[idx] * x[idx] * sp / scale;
    }
}

// Second pass: dx = dy * scale_pow - coef * x * (sum of inner over
// [c - after, c + before]), coef = 2 alpha beta / size.  total = N*C*H*W.
template <typename T, typename I>
__global__ void lrn_backward_kernel(const T* __restrict__ dy,
                                    const T* __restrict__ x,
                                    const T* __restrict__ scale_pow,
                                    const T* __restrict__ inner,
                                    T* __restrict__ dx, long long total, I C,
                                    I HW, I before, I after, T coef) {
    ZF_GRID_STRIDE_LOOP(idx, total) {
        const I e = (I)idx;
        const I c = (e / HW) % C;
        const I col = e - c * HW;
        const T back = zf_channel_sum(inner, col, c, C, HW, after, before);
        dx[idx] = dy[idx] * scale_pow[idx] - coef * x[idx] * back;
    }
}
