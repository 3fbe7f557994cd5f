// im2col and its adjoint col2im, for NCHW images.
//
// T is the element type (float or double), I the index type (int when every
// array involved has fewer than 2**31 elements, else long long; chosen by
// kernels/cuda.py).  common.cuh is pasted in front of this file.
//
// Layouts (see zfraw/kernels/__init__.py):
//   x    (N, C, H, W)
//   cols (N, C*kh*kw, Ho*Wo) = (N, C, kh, kw, Ho, Wo) flattened   (tile_layout 0)
//     or (C*kh*kw, N*Ho*Wo) = (C, kh, kw, N, Ho, Wo) flattened   (tile_layout 1),
//   with cols[n, c, i, j, ho, wo] = xpad[n, c, ho*sh + i, wo*sw + j] (zero padding).
// The tile layout puts every image of a tile side by side, so that one GEMM
// per group covers the whole tile.

// Offset of the block of Ho*Wo entries of tap (i, j) of plane (n, c).
template <typename I>
__device__ __forceinline__ I zf_tap_block(I n, I c, I i, I j, I N, I C, I kh, I kw,
                                          int tile_layout) {
    return tile_layout ? ((c * kh + i) * kw + j) * N + n : ((n * C + c) * kh + i) * kw + j;
}

// One thread per column entry: copy the input pixel under tap (i, j) of window
// (ho, wo), or 0 where the tap lies in the padding.
// total = N*C*kh*kw*Ho*Wo.
template <typename T, typename I>
__global__ void im2col_kernel(const T* __restrict__ x, T* __restrict__ cols,
                              long long total, I N, I C, I H, I W, I kh, I kw,
                              I sh, I sw, I ph, I pw, I Ho, I Wo, int tile_layout) {
    ZF_GRID_STRIDE_LOOP(idx, total) {
        I q = (I)idx;
        const I wo = q % Wo; q /= Wo;
        const I ho = q % Ho; q /= Ho;
        I n = I(0);
        if (tile_layout) { n = q % N; q /= N; }
        const I j = q % kw;  q /= kw;
        const I i = q % kh;  q /= kh;  // now q = n*C + c (or c in the tile layout)
        if (tile_layout) q += n * C;   // the image plane
        const I h = ho * sh - ph + i;
        const I w = wo * sw - pw + j;
        T v = T(0);
        if (h >= 0 && h < H && w >= 0 && w < W) v = x[(q * H + h) * W + w];
        cols[idx] = v;
    }
}

// The adjoint of im2col as a gather: one thread per input pixel sums the
// column entries that were copied from it, so there are no atomics and the
// result is deterministic.  In padded coordinates (hp, wp) = (h + ph, w + pw)
// the pixel is tap i = hp - ho*sh of every window row ho with 0 <= i < kh,
// i.e. ho in [ho_lo, ho_hi] below (and likewise for columns).
//
// The taps are added in ascending (i, j) order, the order of the reference's
// loop over taps (kernels/vectorized.py), so the sums agree bit for bit.
// total = N*C*H*W.
template <typename T, typename I>
__global__ void col2im_kernel(const T* __restrict__ cols, T* __restrict__ x,
                              long long total, I N, I C, I H, I W, I kh, I kw,
                              I sh, I sw, I ph, I pw, I Ho, I Wo, int tile_layout) {
    ZF_GRID_STRIDE_LOOP(idx, total) {
        I q = (I)idx;
        const I w = q % W; q /= W;
        const I h = q % H; q /= H;  // now q = n*C + c
        const I n = q / C;
        const I c = q % C;
        const I hp = h + ph;
        const I wp = w + pw;
        const I ho_lo = hp < kh ? I(0) : (hp - kh) / sh + 1;
        const I ho_hi = zf_min(hp / sh, Ho - 1);
        const I wo_lo = wp < kw ? I(0) : (wp - kw) / sw + 1;
        const I wo_hi = zf_min(wp / sw, Wo - 1);
        T acc = T(0);
        for (I ho = ho_hi; ho >= ho_lo; --ho) {      // tap row i ascending
            const I i = hp - ho * sh;
            for (I wo = wo_hi; wo >= wo_lo; --wo) {  // tap column j ascending
                const I j = wp - wo * sw;
                acc += cols[(zf_tap_block(n, c, i, j, N, C, kh, kw, tile_layout) * Ho + ho) * Wo + wo];
            }
        }
        x[idx] = acc;
    }
}
