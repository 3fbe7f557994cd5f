// Max-pooling with switches, and unpooling through the switches.
//
// T is the element type (float or double), I the index type (int when every
// array involved has fewer than 2**31 elements, else long long; chosen by
// kernels/cuda.py).  common.cuh is pasted in front of this file.
//
// x (N, C, H, W); y and switches (N, C, Ho, Wo).  switches are int64, the flat
// index h*W + w of the maximum in its (unpadded) H*W plane, as PyTorch's
// max_pool2d(return_indices=True).  Window (ho, wo) covers rows
// [ho*sh - ph, ho*sh - ph + kh) and columns [wo*sw - pw, wo*sw - pw + kw).

// One thread per pooled output.  PyTorch's rules: the window is clipped to the
// input (padding never wins); best starts at -inf and the switch at the first
// in-bounds pixel; a pixel replaces the best when it is greater or NaN, so ties
// keep the first maximum in row-major order and the last NaN wins.
// total = N*C*Ho*Wo.
template <typename T, typename I>
__global__ void max_pool2d_kernel(const T* __restrict__ x, T* __restrict__ y,
                                  long long* __restrict__ switches,
                                  long long total, I H, I W, I kh, I kw, I sh,
                                  I sw, I ph, I pw, I Ho, I Wo) {
    ZF_GRID_STRIDE_LOOP(idx, total) {
        I q = (I)idx;
        const I wo = q % Wo; q /= Wo;
        const I ho = q % Ho; q /= Ho;  // now q = n*C + c
        const I top = ho * sh - ph;
        const I left = wo * sw - pw;
        const I h0 = zf_max(top, I(0));
        const I h1 = zf_min(top + kh, H);
        const I w0 = zf_max(left, I(0));
        const I w1 = zf_min(left + kw, W);
        const T* plane = x + q * H * W;
        T best = zf_neg_inf<T>();
        I arg = h0 * W + w0;
        for (I h = h0; h < h1; ++h) {
            for (I w = w0; w < w1; ++w) {
                const T v = plane[h * W + w];
                if (v > best || isnan(v)) {
                    best = v;
                    arg = h * W + w;
                }
            }
        }
        y[idx] = best;
        switches[idx] = (long long)arg;
    }
}

// Unpooling as a deterministic gather, for switches made by max_pool2d with
// this window geometry: one thread per input pixel (h, w) visits the pooled
// windows that contain it (at most ceil(kh/sh) * ceil(kw/sw) of them; Ho and
// Wo come from y's shape, so ceil_mode needs nothing special) and sums y where
// the switch names this pixel.  Windows are visited in row-major pooled order.
// Every output element is written.  A switch that lies outside its own
// window (made by another geometry) is not seen here; the scatter kernel
// below adds it afterwards with strays_only = 1.
// total = N*C*H*W.
template <typename T, typename I>
__global__ void max_unpool2d_gather_kernel(const T* __restrict__ y,
                                           const long long* __restrict__ switches,
                                           T* __restrict__ x, long long total,
                                           I H, I W, I kh, I kw, I sh, I sw,
                                           I ph, I pw, I Ho, I Wo) {
    ZF_GRID_STRIDE_LOOP(idx, total) {
        I q = (I)idx;
        const I w = q % W; q /= W;
        const I h = q % H; q /= H;  // now q = n*C + c
        const I hp = h + ph;
        const I wp = w + pw;
        // windows ho with ho*sh <= hp < ho*sh + kh, and 0 <= ho < Ho
        const I ho_lo = hp < kh ? I(0) : (hp - kh) / sh + 1;
        const I ho_hi = zf_min(hp / sh, Ho - 1);
        const I wo_lo = wp < kw ? I(0) : (wp - kw) / sw + 1;
        const I wo_hi = zf_min(wp / sw, Wo - 1);
        const long long self = (long long)(h * W + w);
        const I base = q * Ho * Wo;
        T acc = T(0);
        for (I ho = ho_lo; ho <= ho_hi; ++ho) {
            for (I wo = wo_lo; wo <= wo_hi; ++wo) {
                const I o = base + ho * Wo + wo;
                if (switches[o] == self) acc += y[o];
            }
        }
        x[idx] = acc;
    }
}

// Unpooling as a scatter with atomicAdd: one thread per pooled value adds it
// to x at its switch.  x must hold zeros (strays_only = 0) or the gather's
// result (strays_only = 1, when only the switches outside their own window
// (ho, wo) of geometry kh, kw, sh, sw, ph, pw are added).  When several values
// land on one pixel the order of their additions is NOT deterministic, so a
// float sum may differ in the last bits from run to run.  Switches outside
// [0, H*W) are skipped (zfraw.functional rejects them before this runs).
// total = N*C*Ho*Wo.
template <typename T, typename I>
__global__ void max_unpool2d_scatter_kernel(const T* __restrict__ y,
                                            const long long* __restrict__ switches,
                                            T* __restrict__ x, long long total,
                                            I H, I W, I kh, I kw, I sh, I sw,
                                            I ph, I pw, I Ho, I Wo,
                                            int strays_only) {
    ZF_GRID_STRIDE_LOOP(idx, total) {
        const long long s = switches[idx];
        if (s < 0 || s >= (long long)H * W) continue;
        I q = (I)idx;
        const I wo = q % Wo; q /= Wo;
        const I ho = q % Ho; q /= Ho;  // now q = n*C + c
        if (strays_only) {
            const I h = (I)s / W;
            const I w = (I)s % W;
            const I top = ho * sh - ph;
            const I left = wo * sw - pw;
            if (h >= top && h < top + kh && w >= left && w < left + kw) continue;
        }
        zf_atomic_add(x + q * H * W + (I)s, y[idx]);
    }
}
