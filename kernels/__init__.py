"""Hot-path kernels, installed as ``zfraw.kernels``.

Every backend provides the same kernels, with the same signatures, on arguments
that :mod:`zfraw.functional` has already validated and normalized (C-contiguous
float32/float64 arrays, strides and pads as separate ints):

``im2col(x, kh, kw, sh, sw, ph, pw) -> cols``
    x (N, C, H, W) -> cols (N, C*kh*kw, Ho*Wo); row index c*kh*kw + i*kw + j,
    column index ho*Wo + wo; cols[n, (c,i,j), (ho,wo)] = xpad[n, c, ho*sh+i, wo*sw+j]
    with zero padding.
``col2im(cols, x_shape, kh, kw, sh, sw, ph, pw) -> x``
    the adjoint of im2col: every column entry is added back to the pixel it came
    from (entries that fall in the padding are dropped).
``im2col_tile(x, kh, kw, sh, sw, ph, pw) -> cols``
    the same columns laid out for one GEMM over a whole tile of images:
    x (N, C, H, W) -> cols (C*kh*kw, N*Ho*Wo), column index (n*Ho + ho)*Wo + wo;
    the rows of group g are g*Cg*kh*kw .. (g+1)*Cg*kh*kw, so W_g (Fg, Cg*kh*kw)
    times those rows is group g's output for every image of the tile at once.
    For N = 1 both layouts are the same array.  Always a new array, which the
    caller owns: conv2d_backward writes the columns of C^T dy over it.
``col2im_tile(cols, x_shape, kh, kw, sh, sw, ph, pw) -> x``
    the adjoint of im2col_tile: cols (C*kh*kw, N*Ho*Wo) -> x (N, C, H, W).
``relu(x) -> y`` and ``relu_backward(s, x, rule) -> out``
    max(x, 0) (NaN kept), and the signal s through a ReLU with forward input x
    by ``rule``: ``backprop`` s where x > 0, ``guided`` s where x > 0 and s > 0,
    ``deconvnet`` max(s, 0) (x may be None); 0 elsewhere.
``max_pool2d(x, kh, kw, sh, sw, ph, pw, Ho, Wo) -> (y, switches)``
    y (N, C, Ho, Wo) and int64 switches of the same shape, each the flat index
    h*W + w into the unpadded input plane; padding is -inf; ties go to the first
    maximum in row-major window order; a NaN wins (the last NaN, as PyTorch).
    ph and pw are the *top and left* pads: window (ho, wo) covers rows
    [ho*sh - ph, ho*sh - ph + kh) and columns [wo*sw - pw, wo*sw - pw + kw), and
    whatever of it lies beyond the input (bottom/right padding, per side, or a
    ceil-mode window) is -inf.  Ho and Wo (from ``pool_output_size``) so imply
    the bottom and right pads.
``max_unpool2d(y, switches, H, W, window) -> x``
    x (N, C, H, W) with x.flat[plane, switch] += y (sums on collision).  window is
    None or (kh, kw, sh, sw, ph, pw) (ph, pw the top and left pads), the geometry
    that produced the switches; a
    backend may use it for a deterministic gather.
``lrn(x, size, alpha, beta, k) -> y`` and ``lrn_backward(dy, x, size, alpha, beta, k) -> dx``
    cross-channel local response norm (PyTorch window: size//2 channels before c,
    (size-1)//2 after).
``sgd_update(w, g, v, lr, momentum, decay) -> None``
    one SGD step in place on C-contiguous arrays of one shape and dtype:
    v <- momentum v - lr g - decay w, then w <- w + v.

Modules: :mod:`vectorized` (array-module generic, used by ``numpy`` and ``cupy``),
:mod:`cpu` (Numba), :mod:`cuda` (raw CUDA through CuPy; sources in ``*.cu``).
"""
