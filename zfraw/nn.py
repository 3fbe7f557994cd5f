"""Layers with parameters and caches, and a Sequential of named layers.

Every layer has three steps, all built on :mod:`zfraw.functional`:

- ``forward(x)`` computes the output and keeps what the other two need;
- ``backward(dy)`` returns the gradient for its input and stores the gradients
  of its parameters in ``layer.grads``;
- ``project(s, rule)`` is the deconvnet step that carries a signal ``s`` from
  the layer's output down to its input: C^T for a conv or linear layer (no
  bias), unpooling through the switches of the last forward for a max-pool,
  the ReLU ``rule`` (``backprop``, ``deconvnet`` or ``guided``) for a rectifier,
  the identity for dropout (in evaluation) and, under the ``deconvnet`` rule, for
  the contrast normalization (as the paper does; the gradient rules ``backprop``
  and ``guided`` take the norm's true adjoint).

``backward`` and ``project`` are the same adjoint walk; they differ only at the
rectifiers (and at LRN under the deconvnet rule), so ``rule="backprop"`` gives
exactly the gradient of the chosen activation with respect to the pixels.  Layers
never look at which backend runs: parameters are arrays of the active backend
(move them with :func:`zfraw.to_device`).
"""
from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np

from zfraw import functional as F
from zfraw._args import shape_arg
from zfraw.backend import get_backend, to_host
from zfraw.io import npz
from zfraw.io.npz import atomic_savez, atomic_write, read_meta  # noqa: F401  (public here too)

__all__ = [
    "Layer", "Conv2d", "ReLU", "MaxPool2d", "LocalResponseNorm", "Linear", "Dropout",
    "Flatten", "Softmax", "Normalize", "Sequential", "load", "LAYER_TYPES",
]


class Layer:
    """Base class: a layer has ``params`` and ``grads`` (dicts of arrays) and a ``training`` flag."""

    #: (kernel, stride, offset) as (h, w) pairs for layers that move a window, else None;
    #: the offset is the (top, left) pad, where the first window starts (per-side pads:
    #: ``layer.padding``)
    geometry = None

    #: keep what backward/project need at each forward; ``Sequential.forward(cache=False)``
    #: turns it off for inference (less memory; backward/project then raise)
    caching = True

    def __init__(self):
        self.params = OrderedDict()
        self.grads = OrderedDict()
        self.training = False

    # --- the three steps
    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def project(self, s, rule="deconvnet"):
        raise NotImplementedError

    def param_backward(self, dy):
        """Store the parameter gradients of dy, without dx (the lowest trainable layer in training).

        The default runs :meth:`backward` and drops dx; layers whose dx costs as much as
        their gradients (Conv2d) skip it.
        """
        self.backward(dy)

    def __call__(self, x):
        return self.forward(x)  # (not ``__call__ = forward``, which would bind Layer.forward)

    # --- bookkeeping
    def config(self) -> dict:
        """The constructor arguments that rebuild this layer (saved with the weights)."""
        return {}

    def clear(self):
        """Drop the caches of the last forward (they can be large)."""
        for key in [k for k in vars(self) if k.startswith("_cache")]:
            setattr(self, key, None)

    def _store(self, **caches):
        """Keep ``_cache_<name> = value`` for backward/project, or None when ``caching`` is off."""
        for key, value in caches.items():
            setattr(self, "_cache_" + key, value if self.caching else None)

    def _apply(self, fn):
        for k, v in self.params.items():
            self.params[k] = fn(v)
        for k, v in self.grads.items():
            self.grads[k] = fn(v)
        self.clear()

    def _need(self, cache, what):
        if cache is None:
            raise RuntimeError(f"{type(self).__name__}.{what} needs a forward pass first")
        return cache

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def _normal(rng, shape, std, dtype):
    """N(0, std^2) weights; ``std="he"`` means sqrt(2 / fan_in) (He et al. 2015);
    ``std=None``: zeros, no draw (for loaders, which set the weights next)."""
    if std is None:
        return np.zeros(shape, dtype)
    if std == "he":
        std = (2.0 / float(np.prod(shape[1:]))) ** 0.5
    elif isinstance(std, str) or not std > 0:
        raise ValueError(f"init_std must be a positive number or 'he', got {std!r}")
    return (rng.standard_normal(shape) * std).astype(dtype)


def _xp():
    return get_backend().xp


class Conv2d(Layer):
    """Convolution (cross-correlation) with weights w (F, C // groups, k, k) and bias b (F,).

    Initialised as in the paper: w ~ N(0, init_std^2) (init_std = 1e-2, or ``"he"``
    for sqrt(2 / fan_in)), b = 0.

    ``pad`` is an int, (ph, pw) or per side (top, bottom, left, right) (see
    :func:`zfraw.functional.pad_sides`); ``self.pad`` keeps the pair form when the
    padding is symmetric, and ``self.padding`` is always (top, bottom, left, right).
    An asymmetric padding is split into the symmetric part (min(top, bottom),
    min(left, right)), which the conv kernels pad as usual, and the rest, an
    explicit :func:`~zfraw.functional.pad2d` of the input before the conv; the
    gradient and the projection end with the adjoint :func:`~zfraw.functional.crop2d`.
    A symmetric padding leaves no rest and runs the plain conv, without a copy.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, pad=0, groups=1,
                 bias=True, init_std=1e-2, seed=0, dtype=np.float32):
        super().__init__()
        kh, kw = F._pair("kernel_size", kernel_size, 1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.groups = (kh, kw), F._pair("stride", stride, 1), int(groups)
        self.padding = F.pad_sides(pad)
        top, bottom, left, right = self.padding
        self.pad = (top, left) if (top, left) == (bottom, right) else self.padding
        # what the conv kernels pad (both sides), and the rest, padded explicitly (zeros when symmetric)
        ph, pw = min(top, bottom), min(left, right)
        self._kernel_pad, self._extra_pad = (ph, pw), (top - ph, bottom - ph, left - pw, right - pw)
        # the window offsets (top, left) place the windows; the far pads only add zeros
        self.geometry = (self.kernel_size, self.stride, (top, left))
        rng = np.random.default_rng(seed)
        xp = _xp()
        self.params["w"] = xp.asarray(_normal(rng, (out_channels, in_channels // groups, kh, kw), init_std, dtype))
        if bias:
            self.params["b"] = xp.zeros(out_channels, dtype=dtype)
        self._cache_x = None

    def config(self):
        return dict(in_channels=self.in_channels, out_channels=self.out_channels,
                    kernel_size=list(self.kernel_size), stride=list(self.stride), pad=list(self.pad),
                    groups=self.groups, bias="b" in self.params)

    def forward(self, x):
        x = F.pad2d(x, self._extra_pad)  # x itself when the padding is symmetric
        self._store(x=x)
        return F.conv2d(x, self.params["w"], self.params.get("b"), self.stride, self._kernel_pad, self.groups)

    def backward(self, dy):
        return F.crop2d(self._gradients(dy, input_grad=True), self._extra_pad)

    def param_backward(self, dy):
        self._gradients(dy, input_grad=False)

    def _gradients(self, dy, input_grad):
        """Store dw and db; return dx of the padded input (None without ``input_grad``)."""
        x = self._need(self._cache_x, "backward")
        dx, dw, db = F.conv2d_backward(dy, x, self.params["w"], self.stride, self._kernel_pad, self.groups,
                                       input_grad=input_grad)
        self.grads["w"] = dw
        if "b" in self.params:
            self.grads["b"] = db
        return dx

    def project(self, s, rule="deconvnet"):
        x = self._need(self._cache_x, "project")
        return F.crop2d(F.conv_transpose2d(s, self.params["w"], self.stride, self._kernel_pad, self.groups,
                                           output_shape=x.shape), self._extra_pad)


class ReLU(Layer):
    """max(x, 0); its projection applies the chosen rule (see :func:`zfraw.functional.relu_backward`)."""

    def __init__(self):
        super().__init__()
        self._cache_x = None

    def forward(self, x):
        self._store(x=x)
        return F.relu(x)

    def backward(self, dy):
        return F.relu_backward(dy, self._need(self._cache_x, "backward"), "backprop")

    def project(self, s, rule="deconvnet"):
        x = None if rule == "deconvnet" else self._need(self._cache_x, "project")
        return F.relu_backward(s, x, rule)


class MaxPool2d(Layer):
    """Max-pooling that keeps its switches; backward and projection unpool through them.

    ``pad`` is an int, (ph, pw) or per side (top, bottom, left, right) (see
    :func:`zfraw.functional.max_pool2d`); ``self.pad`` keeps the pair form when the
    padding is symmetric, and ``self.padding`` is always (top, bottom, left, right).
    """

    def __init__(self, size, stride=None, pad=0, ceil_mode=False):
        super().__init__()
        self.size = F._pair("size", size, 1)
        self.stride = self.size if stride is None else F._pair("stride", stride, 1)
        self.padding = F.pad_sides(pad)
        top, bottom, left, right = self.padding
        self.pad = (top, left) if (top, left) == (bottom, right) else self.padding
        self.ceil_mode = bool(ceil_mode)
        # the window offsets (top, left) place the windows; the far pads only add -inf
        self.geometry = (self.size, self.stride, (top, left))
        self._cache_switches = None
        self._cache_shape = None

    def config(self):
        return dict(size=list(self.size), stride=list(self.stride), pad=list(self.pad), ceil_mode=self.ceil_mode)

    def forward(self, x):
        y, switches = F.max_pool2d(x, self.size, self.stride, self.pad, self.ceil_mode)
        self._store(switches=switches, shape=x.shape)
        return y

    @property
    def switches(self):
        """int64 (N, C, Ho, Wo): flat index h*W + w of each maximum of the last forward."""
        return self._cache_switches

    def backward(self, dy):
        switches = self._need(self._cache_switches, "backward")
        return F.max_unpool2d(dy, switches, self._cache_shape, size=self.size, stride=self.stride, pad=self.pad)

    def project(self, s, rule="deconvnet"):
        return self.backward(s)


class LocalResponseNorm(Layer):
    """Cross-channel local response normalization (the paper's contrast normalization).

    b_c = a_c / (k + alpha/size * sum_j a_j^2)^beta; its projection is the identity,
    as in the paper, except under the ``backprop`` rule, which is the exact gradient.
    """

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=2.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)
        self._cache_x = None

    def config(self):
        return dict(size=self.size, alpha=self.alpha, beta=self.beta, k=self.k)

    def forward(self, x):
        self._store(x=x)
        return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)

    def backward(self, dy):
        x = self._need(self._cache_x, "backward")
        return F.local_response_norm_backward(dy, x, self.size, self.alpha, self.beta, self.k)

    def project(self, s, rule="deconvnet"):
        # the deconvnet passes the norm through unchanged (as the paper does); the
        # gradient rules ("backprop", and "guided", which is the gradient with a
        # different rectifier) take its true adjoint
        return s if rule == "deconvnet" else self.backward(s)


class Linear(Layer):
    """y = x w^T + b with w (out, in), initialised N(0, init_std^2) (or ``"he"``), b = 0."""

    def __init__(self, in_features, out_features, bias=True, init_std=1e-2, seed=0, dtype=np.float32):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        rng = np.random.default_rng(seed)
        xp = _xp()
        self.params["w"] = xp.asarray(_normal(rng, (out_features, in_features), init_std, dtype))
        if bias:
            self.params["b"] = xp.zeros(out_features, dtype=dtype)
        self._cache_x = None

    def config(self):
        return dict(in_features=self.in_features, out_features=self.out_features, bias="b" in self.params)

    def forward(self, x):
        self._store(x=x)
        return F.linear(x, self.params["w"], self.params.get("b"))

    def backward(self, dy):
        dx, dw, db = F.linear_backward(dy, self._need(self._cache_x, "backward"), self.params["w"])
        self.grads["w"] = dw
        if "b" in self.params:
            self.grads["b"] = db
        return dx

    def project(self, s, rule="deconvnet"):
        return s @ self.params["w"]


class Dropout(Layer):
    """Inverted dropout while training (keep with probability 1 - p, scale by 1/(1 - p)); identity otherwise."""

    def __init__(self, p=0.5, seed=0):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"p must be in [0, 1), got {p}")
        self.p = float(p)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._cache_mask = None

    def config(self):
        # the seed too: rebuilt from a file, drop6 and drop7 must not share one mask stream
        if self.seed is None or isinstance(self.seed, (int, np.integer)):
            return dict(p=self.p, seed=None if self.seed is None else int(self.seed))
        return dict(p=self.p)

    def forward(self, x):
        if not self.training or self.p == 0:
            self._cache_mask = None
            return x
        y, self._cache_mask = F.dropout(x, self.p, self.rng)
        return y

    def backward(self, dy):
        return dy if self._cache_mask is None else dy * self._cache_mask

    def project(self, s, rule="deconvnet"):
        return self.backward(s)


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W); backward and projection reshape back."""

    def __init__(self):
        super().__init__()
        self._cache_shape = None

    def forward(self, x):
        self._store(shape=x.shape)
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self._need(self._cache_shape, "backward"))

    def project(self, s, rule="deconvnet"):
        return self.backward(s)


class Softmax(Layer):
    """p = softmax(z) over the last axis (N, K), as a layer so that an imported
    network's output matches the file's probabilities.

    backward is the exact adjoint of its Jacobian, dz = p * (dp - sum_k dp_k p_k);
    projection (every rule) takes the same adjoint.  To train, leave it out and use
    :func:`zfraw.functional.cross_entropy` on the scores.
    """

    def __init__(self):
        super().__init__()
        self._cache_p = None

    def forward(self, x):
        p = F.softmax(x)
        self._store(p=p)
        return p

    def backward(self, dy):
        p = self._need(self._cache_p, "backward")
        return p * (dy - (dy * p).sum(axis=-1, keepdims=True))

    def project(self, s, rule="deconvnet"):
        return self.backward(s)


class Normalize(Layer):
    """An imported network's input preprocessing as a layer (no parameters).

    x (N, 3, H, W) = pixels / 255 in RGB, as every zfraw model takes it ->
    ``y[:, c] = (x[:, order[c]] * scale - mean[c]) / std[c]``, where ``order`` is
    (0, 1, 2) for ``"RGB"`` and (2, 1, 0) for ``"BGR"``
    (see :class:`zfraw.io.preprocess.Preprocessing`).  It is affine, so backward
    and projection (every rule) apply its linear part transposed:
    ``dx[:, order[c]] = dy[:, c] * scale / std[c]``, which carries a deconvnet
    projection back into RGB pixel space.
    """

    def __init__(self, channel_order="RGB", scale=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)):
        super().__init__()
        from zfraw.io.preprocess import Preprocessing

        checked = Preprocessing(channel_order, scale, mean, std)  # validates
        self.channel_order, self.scale = checked.channel_order, checked.scale
        self.mean, self.std = checked.mean, checked.std
        self.order = [2, 1, 0] if self.channel_order == "BGR" else [0, 1, 2]

    def config(self):
        return dict(channel_order=self.channel_order, scale=self.scale, mean=list(self.mean), std=list(self.std))

    def pixel_mean(self):
        """The input that this layer maps to 0: the mean as pixels / 255 in RGB, (3,) floats.

        x[order[c]] = mean[c] / scale: what an occluder fills so that it hides the
        image with the training set's mean, as a zero does for zfraw's own models.
        """
        rgb = [0.0, 0.0, 0.0]
        for c, source in enumerate(self.order):
            rgb[source] = self.mean[c] / self.scale
        return tuple(rgb)

    def _coefficients(self, like):
        xp = get_backend().xp
        gain = xp.asarray([self.scale / s for s in self.std], dtype=like.dtype).reshape(1, 3, 1, 1)
        shift = xp.asarray([m / s for m, s in zip(self.mean, self.std)], dtype=like.dtype).reshape(1, 3, 1, 1)
        return gain, shift

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be (N, 3, H, W) RGB images, got shape {tuple(x.shape)}")
        gain, shift = self._coefficients(x)
        return x[:, self.order] * gain - shift

    def backward(self, dy):
        gain, _ = self._coefficients(dy)
        return (dy * gain)[:, self.order]  # order is its own inverse

    def project(self, s, rule="deconvnet"):
        return self.backward(s)


LAYER_TYPES = {cls.__name__: cls for cls in (Conv2d, ReLU, MaxPool2d, LocalResponseNorm, Linear, Dropout,
                                             Flatten, Softmax, Normalize)}


class Sequential:
    """A chain of *named* layers.

    ``net = Sequential([("conv1", Conv2d(3, 96, 7, 2, 1)), ("relu1", ReLU()), ...])``;
    ``net["conv1"]`` is a layer; ``net.forward(x)`` keeps every named output in
    ``net.activations``; ``net.backward(dy)`` stores every parameter gradient;
    ``net.project(s, layer, rule)`` walks a signal at ``layer``'s output down to pixels.
    Parameters are named ``"<layer>.<param>"`` (``"conv1.w"``, ``"conv1.b"``).
    """

    def __init__(self, layers, input_shape=None, name="net", preprocessing=None):
        if isinstance(layers, dict):
            layers = list(layers.items())
        self.layers = OrderedDict()
        for item in layers:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise TypeError("layers must be (name, layer) pairs")
            lname, layer = item
            if not isinstance(layer, Layer):
                raise TypeError(f"layer {lname!r} must be a zfraw.nn.Layer, got {type(layer).__name__}")
            if not isinstance(lname, str) or not lname or "." in lname:
                raise ValueError(f"layer names must be non-empty strings without '.', got {lname!r}")
            if lname in self.layers:
                raise ValueError(f"layer name {lname!r} is used twice")
            self.layers[lname] = layer
        self.input_shape = None if input_shape is None else shape_arg("input_shape", input_shape, (3,))
        self.name = name
        #: the :class:`zfraw.io.preprocess.Preprocessing` an imported network expects (None:
        #: zfraw's own convention, pixels / 255 minus the saved mean); saved in the spec
        from zfraw.io.preprocess import Preprocessing

        self.preprocessing = Preprocessing.from_dict(preprocessing)
        self.activations = OrderedDict()

    # --- access
    @property
    def names(self):
        return list(self.layers)

    @property
    def dtype(self):
        """The dtype of the parameters (float32 for a net without any): what inputs are cast to."""
        params = self.parameters()
        return next(iter(params.values())).dtype if params else np.dtype(np.float32)

    def __getitem__(self, name):
        return self.layers[self.check_layer(name)]

    def __iter__(self):
        return iter(self.layers.items())

    def __len__(self):
        return len(self.layers)

    def check_layer(self, name):
        """Return ``name`` if it is a layer of this net, else a ValueError listing the names."""
        if name not in self.layers:
            raise ValueError(f"layer {name!r} is not in this network; its layers are {', '.join(self.layers)}")
        return name

    def probabilities(self, out):
        """Class probabilities (N, K) from the network's output ``out``: its softmax, or
        ``out`` itself when the last layer already is a :class:`Softmax` (imported models)."""
        if self.layers and isinstance(next(reversed(self.layers.values())), Softmax):
            return out
        return F.softmax(out)

    # --- modes
    def train(self, mode=True):
        for layer in self.layers.values():
            layer.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    @property
    def training(self):
        return any(layer.training for layer in self.layers.values())

    # --- the three walks
    def forward(self, x, upto=None, keep=True, cache=True):
        """Run the layers in order (up to and including ``upto``); returns the last output.

        With ``keep`` every layer's output is kept in ``self.activations[name]``.
        With ``cache=False`` (inference) the layers keep nothing for backward or
        project (no inputs, no switches): a layer's input is freed as soon as the
        next layer has its output, and ``backward``/``project`` then raise
        "needs a forward pass first".  (Dropout's mask, kept only in training, is
        the exception.)  The layers cache again after the call.
        """
        stop = self.check_layer(upto) if upto is not None else None
        self.activations = OrderedDict()
        try:
            for lname, layer in self.layers.items():
                layer.caching = bool(cache)
                x = layer.forward(x)
                if keep:
                    self.activations[lname] = x
                if lname == stop:
                    break
        finally:
            for layer in self.layers.values():
                layer.caching = True
        return x

    __call__ = forward

    def backward(self, dy, input_grad=True):
        """Backpropagate dy from the output; every layer stores its parameter gradients; returns dx.

        ``input_grad=False`` (training) stops at the lowest layer with parameters, which
        stores its gradients without computing its dx (for conv1 as costly as its dw),
        and returns None.
        """
        layers = list(self.layers.values())
        if not input_grad:
            lowest = next((i for i, layer in enumerate(layers) if layer.params), None)
            if lowest is None:
                return None
            for layer in reversed(layers[lowest + 1:]):
                dy = layer.backward(dy)
            layers[lowest].param_backward(dy)
            return None
        for layer in reversed(layers):
            dy = layer.backward(dy)
        return dy

    def project(self, s, layer, rule="deconvnet"):
        """Carry a signal s at the output of ``layer`` down to the input (needs a forward first).

        Each layer from ``layer`` down applies its ``project`` step with the ReLU ``rule``.
        """
        if rule not in F.RELU_RULES:
            raise ValueError(f"rule must be one of {F.RELU_RULES}, got {rule!r}")
        names = self.names[: self.names.index(self.check_layer(layer)) + 1]
        for lname in reversed(names):
            s = self.layers[lname].project(s, rule)
        return s

    # --- parameters
    def parameters(self):
        """Ordered dict ``"layer.param" -> array`` (the live arrays)."""
        return OrderedDict(
            (f"{lname}.{pname}", p) for lname, layer in self.layers.items() for pname, p in layer.params.items()
        )

    def gradients(self):
        """Ordered dict ``"layer.param" -> gradient`` from the last backward."""
        return OrderedDict(
            (f"{lname}.{pname}", g) for lname, layer in self.layers.items() for pname, g in layer.grads.items()
        )

    def set_parameter(self, qualified_name, value):
        lname, _, pname = qualified_name.partition(".")
        layer = self[lname]
        if pname not in layer.params:
            raise ValueError(f"{lname} has no parameter {pname!r}; it has {list(layer.params)}")
        layer.params[pname] = value

    def num_parameters(self):
        return int(sum(int(np.prod(p.shape)) for p in self.parameters().values()))

    def state_dict(self):
        """Host (NumPy) copies of every parameter, by qualified name."""
        return OrderedDict((k, np.array(to_host(v))) for k, v in self.parameters().items())

    def load_state_dict(self, state, strict=True):
        """Copy parameters in by name (shapes must match); arrays go to the active backend."""
        own = self.parameters()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise ValueError(f"state does not match the network: missing {missing}, unexpected {unexpected}")
        xp = get_backend().xp
        for k, v in state.items():
            if k not in own:
                continue
            kind = getattr(getattr(v, "dtype", None), "kind", None)
            if kind is None:
                raise TypeError(f"state[{k!r}] must be an array, got {type(v).__name__}")
            if kind not in "fiu":  # complex would lose its imaginary part, bool/str/object mean nothing here
                raise TypeError(f"state[{k!r}] must hold real numbers, got dtype {v.dtype}")
            if tuple(v.shape) != tuple(own[k].shape):
                raise ValueError(f"parameter {k} has shape {tuple(own[k].shape)} but the state gives {tuple(v.shape)}")
            self.set_parameter(k, xp.asarray(v, dtype=own[k].dtype))
        return self

    def astype(self, dtype):
        """Cast every parameter (e.g. to float64 for gradient checks); returns self."""
        return self._apply(lambda a: a.astype(dtype))

    def _apply(self, fn):
        for layer in self.layers.values():
            layer._apply(fn)
        self.activations = OrderedDict()
        return self

    def clear(self):
        """Drop kept activations and layer caches."""
        for layer in self.layers.values():
            layer.clear()
        self.activations = OrderedDict()

    # --- architecture and files
    def spec(self):
        """A JSON-able description that rebuilds the architecture (see :func:`load`)."""
        spec = dict(name=self.name, input_shape=self.input_shape,
                    layers=[[lname, type(layer).__name__, layer.config()] for lname, layer in self.layers.items()])
        if self.preprocessing is not None:
            spec["preprocessing"] = self.preprocessing.to_dict()
        return spec

    @classmethod
    def from_spec(cls, spec):
        layers = []
        for lname, type_name, config in spec["layers"]:
            if type_name not in LAYER_TYPES:
                raise ValueError(f"unknown layer type {type_name!r} for layer {lname!r}")
            if type_name in ("Conv2d", "Linear"):  # the weights come next: skip the random draw
                config = dict(config, init_std=None)
            layers.append((lname, LAYER_TYPES[type_name](**config)))
        return cls(layers, input_shape=spec.get("input_shape"), name=spec.get("name", "net"),
                   preprocessing=spec.get("preprocessing"))

    def save(self, path, **extra):
        """Write the architecture and parameters to ``path`` (.npz), atomically.

        ``extra`` arrays or JSON-able values (class names, training metadata) are
        stored too (format: :mod:`zfraw.io.npz`).
        """
        host = OrderedDict((k, to_host(v)) for k, v in self.parameters().items())  # no copies
        return npz.write(path, self.spec(), host, extra=extra)

    def load(self, path, strict=True, allow_float16=False):
        """Load parameters saved by :meth:`save` (or any .npz of ``"layer.param"`` arrays)."""
        return self.load_state_dict(npz.read(path, allow_float16=allow_float16).params, strict=strict)

    def summary(self, input_shape=None):
        """Rows (name, type, output shape, parameter count) for one image of ``input_shape``."""
        shape = input_shape if input_shape is not None else self.input_shape
        if shape is None:
            raise ValueError("input_shape is needed (the network does not record one)")
        shape = shape_arg("input_shape", shape, (3,))
        xp = get_backend().xp
        params = {lname: int(sum(int(np.prod(p.shape)) for p in layer.params.values()))
                  for lname, layer in self.layers.items()}
        dtype = next(iter(self.parameters().values())).dtype if self.parameters() else np.float32
        was_training = self.training
        self.eval()
        self.forward(xp.zeros((1,) + tuple(shape), dtype=dtype))
        rows = [(lname, type(self.layers[lname]).__name__, tuple(a.shape[1:]), params[lname])
                for lname, a in self.activations.items()]
        self.train(was_training)
        self.clear()
        return rows

    def __repr__(self):
        inner = "\n".join(f"  ({lname}): {layer!r}" for lname, layer in self.layers.items())
        return f"Sequential(\n{inner}\n)"


def load(path, allow_float16=False):
    """Rebuild a network (architecture and weights) from a file written by :meth:`Sequential.save`.

    The file is checked when it is read (:func:`zfraw.io.npz.read`): anything but a
    zfraw ``.npz`` is a ValueError naming the file; parameters must be float32 or
    float64 (float16 only with ``allow_float16=True``, cast to float32).  The
    network takes the saved dtype when all parameters share one.
    """
    contents = npz.read(path, allow_float16=allow_float16, require_meta=True)
    try:
        net = Sequential.from_spec(contents.spec)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{os.fspath(path)!r}: its architecture record cannot be rebuilt: {exc}") from None
    state = contents.params
    dtypes = {v.dtype for v in state.values()}
    if len(dtypes) == 1 and dtypes != {np.dtype(np.float32)}:  # layers are built float32: keep e.g. float64
        net.astype(dtypes.pop())
    try:
        return net.load_state_dict(state)
    except ValueError as exc:
        raise ValueError(f"{os.fspath(path)!r}: {exc}") from None
