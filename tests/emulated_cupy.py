"""A NumPy stand-in for CuPy that keeps CuPy's host/device boundary, for tests on machines without a GPU.

Its arrays hold NumPy arrays but behave, at the boundary, as CuPy's do (checked against CuPy's
``cupy/_core/core.pyx``):

* no implicit conversion to the host: ``np.asarray(a)``, ``np.savez(f, a=a)``, ``Image.fromarray(a)``
  and matplotlib raise ``TypeError`` (CuPy's ``__array__`` does); ``a.get()`` and ``cupy.asnumpy(a)``
  copy to the host;
* no implicit transfer the other way either: an operation that mixes a NumPy array with a device
  array raises ``TypeError`` (``cupy.maximum(host, dev)``, ``dev + host``, ``np.add(dev, host)``);
  ``cupy.asarray``/``cupy.array`` transfer, and assignment ``dev[...] = host`` is allowed, as in CuPy;
* results are device arrays, never NumPy scalars: a reduction or a single element is a 0-d device
  array, which ``float()``, ``int()``, ``bool()`` and ``format()`` accept (CuPy syncs) but which has
  no ``__index__`` (``range(a.max())`` or ``names[a.argmax()]`` fail, as in CuPy);
* NumPy functions called on device arrays dispatch to "cupy" (``__array_function__``/
  ``__array_ufunc__``), as CuPy's do.

It is more permissive than CuPy in one way: every NumPy function is offered, also those CuPy lacks.
Use :func:`install` (or the ``emulated_cupy`` fixture of conftest.py): it puts the module in
``sys.modules`` as ``cupy`` with one pretend device.
"""
import operator
import sys
import types

import numpy as np

HOST_MESSAGE = ("Unsupported type {}: a NumPy array in a device operation (CuPy does not move host "
                "arrays implicitly; use cupy.asarray)")
#: functions that take host arrays (they are the transfer)
TRANSFERS = frozenset({"asarray", "array", "asnumpy"})


def _unwrap(obj, allow_host=False):
    """The NumPy arrays inside ``obj`` (device arrays, and lists/tuples/dicts of them)."""
    if isinstance(obj, ndarray):
        return obj._host
    if isinstance(obj, np.ndarray):
        if not allow_host:
            raise TypeError(HOST_MESSAGE.format(type(obj)))
        return obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unwrap(o, allow_host) for o in obj)
    if isinstance(obj, dict):
        return {k: _unwrap(v, allow_host) for k, v in obj.items()}
    return obj


def _wrap(obj):
    """Device arrays for the NumPy arrays and scalars in a result (CuPy never returns NumPy scalars)."""
    if isinstance(obj, np.ndarray):
        return ndarray(obj)
    if isinstance(obj, np.generic):
        return ndarray(np.asarray(obj))
    if isinstance(obj, tuple):
        return tuple(_wrap(o) for o in obj)
    if isinstance(obj, list):
        return [_wrap(o) for o in obj]
    return obj


def _device_call(fn, allow_host=False):
    def call(*args, **kwargs):
        return _wrap(fn(*_unwrap(args, allow_host), **_unwrap(kwargs, allow_host)))

    call.__name__ = getattr(fn, "__name__", "call")
    return call


class ndarray:
    """A device array: a NumPy array behind CuPy's boundary (see the module docstring)."""

    __slots__ = ("_host",)
    __module__ = "cupy"  # zfraw recognises CuPy arrays by their type's module
    #: how many device arrays were made (a test can see that its code ran on the "device")
    made = 0

    def __init__(self, host):
        self._host = host
        ndarray.made += 1

    # ---- the boundary
    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def get(self, stream=None, order="C", out=None):
        if out is not None:
            out[...] = self._host
            return out
        return np.array(self._host, order=order)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        raw = _unwrap(inputs)
        kw = _unwrap(kwargs)
        return _wrap(getattr(ufunc, method)(*raw, **kw))

    def __array_function__(self, func, types_, args, kwargs):
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    # ---- attributes and methods of the NumPy array, on the device
    def __getattr__(self, name):
        if name.startswith("__") or name in ("ctypes", "data", "tofile", "dump", "dumps"):
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r} (emulated CuPy)")
        value = getattr(self._host, name)
        return _device_call(value) if callable(value) else _wrap(value)

    def __getitem__(self, key):
        return _wrap(self._host[_unwrap(key, allow_host=True)])

    def __setitem__(self, key, value):
        self._host[_unwrap(key, allow_host=True)] = _unwrap(value, allow_host=True)

    def __len__(self):
        if self._host.ndim == 0:
            raise TypeError("len() of unsized object")
        return len(self._host)

    def __iter__(self):
        if self._host.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self._host)))

    def __bool__(self):
        return bool(self._host)

    def __int__(self):
        return int(self._host)

    def __float__(self):
        return float(self._host)

    def __format__(self, spec):
        return format(self._host if self._host.ndim else self._host[()], spec)

    def __repr__(self):
        return f"emulated cupy {self._host!r}"

    def __str__(self):
        return str(self._host)

    __hash__ = None


def _binary(op):
    def forward(self, other):
        return _wrap(op(self._host, _unwrap(other)))

    def reflected(self, other):
        return _wrap(op(_unwrap(other), self._host))

    return forward, reflected


def _inplace(op):
    def apply(self, other):
        op(self._host, _unwrap(other))
        return self

    return apply


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor",
              "lshift", "rshift"):
    _op = getattr(operator, _name if _name not in ("and", "or") else _name + "_")
    _forward, _reflected = _binary(_op)
    setattr(ndarray, f"__{_name}__", _forward)
    setattr(ndarray, f"__r{_name}__", _reflected)
    setattr(ndarray, f"__i{_name}__", _inplace(getattr(operator, f"i{_name}")))
for _name in ("lt", "le", "eq", "ne", "gt", "ge"):
    setattr(ndarray, f"__{_name}__", _binary(getattr(operator, _name))[0])
for _name in ("neg", "pos", "abs", "invert"):
    setattr(ndarray, f"__{_name}__", (lambda op: lambda self: _wrap(op(self._host)))(getattr(operator, _name)))


class _Namespace(types.ModuleType):
    """A module whose functions are NumPy's (``numpy.<path>``), called on device arrays."""

    def __init__(self, name, host_module):
        super().__init__(name)
        self._host_module = host_module

    def __getattr__(self, name):
        value = getattr(self._host_module, name)
        if isinstance(value, types.ModuleType):
            return _Namespace(f"{self.__name__}.{name}", value)
        if isinstance(value, type) or not callable(value):
            return value  # dtypes and constants are NumPy's in CuPy too
        if isinstance(value, np.ufunc):
            return _Ufunc(value)
        return _device_call(value, allow_host=name in TRANSFERS)


class _Ufunc:
    """A NumPy ufunc on device arrays (``cupy.add(a, b, out=c)``, ``cupy.add.at``)."""

    def __init__(self, ufunc):
        self._ufunc = ufunc
        self.__name__ = ufunc.__name__

    def __call__(self, *args, **kwargs):
        return _device_call(self._ufunc)(*args, **kwargs)

    def __getattr__(self, name):
        value = getattr(self._ufunc, name)
        return _device_call(value) if callable(value) else value


def host_view(a):
    """The NumPy array behind a device array (the same memory: writes to it show on the device)."""
    return a._host


def _asnumpy(a, *args, **kwargs):
    return a.get() if isinstance(a, ndarray) else np.asarray(a)


def module():
    """A fresh ``cupy`` module backed by NumPy, with one pretend device; returns {name: module}."""
    cupy = _Namespace("cupy", np)
    cupy.ndarray = ndarray
    cupy.asnumpy = _asnumpy
    cupy.__version__ = "emulated"
    cupy.get_array_module = lambda *arrays: cupy if any(isinstance(a, ndarray) for a in arrays) else np
    runtime = types.ModuleType("cupy.cuda.runtime")
    runtime.getDeviceCount = lambda: 1
    runtime.getDeviceProperties = lambda device: {"name": b"emulated GPU (NumPy)", "totalGlobalMem": 2 ** 34}
    cuda = types.ModuleType("cupy.cuda")
    cuda.runtime = runtime
    cuda.Device = lambda device=0: types.SimpleNamespace(id=device, synchronize=lambda: None)
    cupy.cuda = cuda
    return {"cupy": cupy, "cupy.cuda": cuda, "cupy.cuda.runtime": runtime}


def install(monkeypatch):
    """Make ``import cupy`` give the emulation for the rest of the test (``monkeypatch`` undoes it)."""
    for name, mod in module().items():
        monkeypatch.setitem(sys.modules, name, mod)
    return sys.modules["cupy"]


__all__ = ["ndarray", "module", "install", "host_view", "HOST_MESSAGE", "TRANSFERS"]
