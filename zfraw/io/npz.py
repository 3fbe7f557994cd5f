"""zfraw's own model file: a NumPy ``.npz`` archive, read without unpickling.

One reader and one writer for everything zfraw saves: :meth:`zfraw.nn.Sequential.save`,
:func:`zfraw.nn.load` and the training checkpoints of :func:`zfraw.train.fit`.

The archive holds

- ``"<layer>.<param>"`` arrays (``"conv1.w"``, ``"fc8.b"``): the parameters, float32 or
  float64;
- ``"__zfraw__"``: the metadata, UTF-8 JSON stored as a uint8 array::

      {"spec": {...},            # the architecture (zfraw.nn.Sequential.spec())
       "extra": {...},           # JSON values saved with it (classes, mean, history, ...)
       ...}                      # checkpoints add "epoch", "history", "dropout_rng"

  the preprocessing an imported model expects lives in ``spec["preprocessing"]``
  (see :mod:`zfraw.io.preprocess`);
- other arrays, named without a ``"."`` (extra arrays passed to ``save``), and a
  checkpoint's ``"velocity/<layer>.<param>"`` momentum buffers.

Files are written atomically (a temporary file beside the target, then
``os.replace``) and read with ``allow_pickle=False``.  Anything that is not such an
archive -- a JPEG, a text file, a ``.npy``, a truncated or empty file, a folder -- is
a ``ValueError`` that names the file and says what it is instead.  Parameters must
be float32 or float64: integer, boolean and complex arrays are refused when the file
is read, and float16 is accepted only with ``allow_float16=True`` (then cast to
float32).
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
import zipfile
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "META_KEY", "NpzContents", "write", "read", "read_meta", "is_parameter",
    "atomic_write", "atomic_savez", "remove_stale_temporaries", "temporary_prefix",
]

#: the archive member that holds the JSON metadata
META_KEY = "__zfraw__"
#: suffix of the temporary files :func:`atomic_write` writes beside the target
TMP_SUFFIX = ".tmp"
#: a temporary untouched for this long is stale (its writer was killed), not another process's write
STALE_AFTER_S = 60.0

PARAM_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# ============================================================== atomic files

def _umask():
    """The process's file-creation mask (read by setting it and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temporary_prefix(path):
    """The start of every temporary written for ``path``: ``.NAME.`` (hidden, and named after its target)."""
    return f".{os.path.basename(os.fspath(path))}."


def atomic_write(path, write, suffix=TMP_SUFFIX):
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it into place.

    The temporary is ``.NAME.XXXXXXXX<suffix>`` in the target's folder. A failure leaves no partial
    file (and an existing ``path`` untouched).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=suffix, dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; give it a new file's usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_savez(path, arrays):
    """np.savez to a temporary file beside ``path``, then rename: never a half-written file."""
    if not os.fspath(path).endswith(".npz"):
        raise ValueError(f"path must end in .npz, got {os.fspath(path)!r}")
    return atomic_write(path, lambda fh: np.savez(fh, **arrays))


def remove_stale_temporaries(path, stale_after_s=STALE_AFTER_S):
    """Delete the temporaries a killed write of ``path`` left beside it; returns the paths removed.

    Only ``path``'s own temporaries (``.NAME.XXXXXXXX.tmp``, see :func:`atomic_write`) that nobody has
    written to for ``stale_after_s`` seconds are touched: a write of another file in the folder, or one
    of the same file still running in another process, is left alone.
    """
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    ours = re.compile(re.escape(temporary_prefix(path)) + r"[a-z0-9_]{8}" + re.escape(TMP_SUFFIX))
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    now = time.time()
    for name in filter(ours.fullmatch, names):
        full = os.path.join(directory, name)
        try:
            if now - os.stat(full).st_mtime >= stale_after_s:
                os.unlink(full)
                removed.append(full)
        except OSError:
            pass
    return removed


# ============================================================== write

def is_parameter(key):
    """A ``"layer.param"`` key (not metadata, not a checkpoint's ``"velocity/..."``)."""
    return "." in key and not key.startswith(("__", "velocity/"))


def write(path, spec, state, extra=None, arrays=None, **meta):
    """Write a zfraw ``.npz``: the architecture ``spec``, parameters and metadata, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Must end in ``.npz``.
    spec : dict or None
        :meth:`zfraw.nn.Sequential.spec` (None: parameters only).
    state : mapping ``"layer.param" -> array``
        The parameters (host arrays).
    extra : dict, optional
        JSON values (classes, mean, ...) and arrays; arrays are stored as archive
        members named by their key (no ``"."`` allowed), the rest in the JSON.
    arrays : mapping, optional
        Further arrays stored as they are (a checkpoint's ``"velocity/..."``).
    **meta
        Further JSON fields at the top of the metadata (``epoch``, ``history``, ...).
    """
    extra = dict(extra or {})
    record = {"spec": spec, "extra": {k: v for k, v in extra.items() if not hasattr(v, "shape")}}
    record.update(meta)
    members = {}
    for k, v in extra.items():
        if hasattr(v, "shape"):
            if "." in k or k.startswith("__"):
                raise ValueError(f"extra array names must not contain '.' or start with '__', got {k!r}")
            members[k] = np.asarray(v)
    for k, v in state.items():
        if not is_parameter(k):
            raise ValueError(f"parameter names must be 'layer.param', got {k!r}")
        members[k] = np.asarray(v)
    members.update({k: np.asarray(v) for k, v in (arrays or {}).items()})
    members[META_KEY] = np.frombuffer(json.dumps(record).encode(), dtype=np.uint8)
    return atomic_savez(path, members)


# ============================================================== read

@dataclass
class NpzContents:
    """What a zfraw ``.npz`` holds.

    meta : dict
        The JSON record (``{}`` when the file has none: a plain archive of parameters).
    params : dict ``"layer.param" -> ndarray``
        float32/float64 (float16 cast to float32 when allowed).
    arrays : dict
        Extra arrays (names without a ``"."``).
    other : dict
        Everything else (a checkpoint's ``"velocity/..."`` buffers).
    """

    meta: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)
    other: dict = field(default_factory=dict)

    @property
    def spec(self):
        return self.meta.get("spec")

    @property
    def extra(self):
        """The JSON extras, with the extra arrays added."""
        out = dict(self.meta.get("extra") or {})
        out.update(self.arrays)
        return out


def _not_npz(path, what):
    return ValueError(f"{os.fspath(path)!r} is not a zfraw weights file (.npz): {what}")


def _sniff(path):
    """A short description of what a file that is not a zip archive looks like."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head:
        return "the file is empty"
    if head.startswith(b"\x93NUMPY"):
        return "it is a single NumPy array (.npy), not an archive of named arrays"
    if head.startswith(b"\xff\xd8\xff") or head.startswith(b"\x89PNG") or head[:4] in (b"GIF8", b"RIFF"):
        return "it is an image"
    if head.startswith(b"PK"):
        return "it is a damaged or truncated zip archive"
    if head.startswith(b"\x80") or head.startswith(b"\x08") or head.startswith(b"\n"):
        return "it looks like a pickle or protobuf file (a .pth or .onnx model? use 'zfraw import')"
    try:
        head.decode("utf-8")
        return "it is a text file"
    except UnicodeDecodeError:
        return "it is not a zip archive"


def _check_param(path, key, value, allow_float16):
    if value.dtype in PARAM_DTYPES:
        return value
    if value.dtype == np.float16 and allow_float16:
        return value.astype(np.float32)
    hint = " (pass allow_float16=True to cast float16 to float32)" if value.dtype == np.float16 else ""
    raise ValueError(
        f"{os.fspath(path)!r}: parameter {key!r} has dtype {value.dtype}; zfraw parameters must be "
        f"float32 or float64{hint}"
    )


def _members(path):
    """Every member of the archive at ``path``, or a ValueError saying what the file is instead."""
    try:
        data = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        what = _sniff(path)
        if isinstance(exc, zipfile.BadZipFile) or what.startswith("it is a damaged"):
            what = f"it is a damaged or truncated zip archive ({type(exc).__name__})"
        raise _not_npz(path, what) from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise _not_npz(path, "it is a single NumPy array (.npy), not an archive of named arrays")
    try:
        with data:
            members = {k: data[k] for k in data.files}
    except Exception as exc:  # BadZipFile, zlib.error, ValueError from a corrupt or pickled member
        if "pickle" in str(exc):
            raise _not_npz(path, "a member holds pickled Python objects, which zfraw never loads") from None
        raise _not_npz(path, f"a member could not be read ({type(exc).__name__})") from None
    foreign = [k for k, v in members.items() if not isinstance(v, np.ndarray)]
    if foreign:
        raise _not_npz(path, f"it is a zip archive whose member {foreign[0]!r} is not a NumPy array "
                             "(a PyTorch .pth? convert it with 'zfraw import')")
    return members


def read(path, allow_float16=False, require_meta=False):
    """Read a zfraw ``.npz`` -> :class:`NpzContents`, checking everything it holds.

    Parameters
    ----------
    path : str or os.PathLike
    allow_float16 : bool
        Accept float16 parameters (e.g. compact training snapshots), cast to
        float32.  Off by default: integer, boolean, complex and float16
        parameters are a ``ValueError`` naming the key.
    require_meta : bool
        The file must carry zfraw's metadata record (every file :func:`write`
        makes does; a plain ``np.savez`` of parameters does not).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        Anything else: a folder, an empty, truncated or foreign file, a bad record
        or a parameter of the wrong dtype; the message names the file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    if os.path.isdir(path):
        raise _not_npz(path, "it is a folder")
    members = _members(path)
    contents = NpzContents()
    if META_KEY in members:
        record = members.pop(META_KEY)
        try:
            if record.dtype != np.uint8:
                raise TypeError
            contents.meta = json.loads(record.tobytes().decode("utf-8"))
            if not isinstance(contents.meta, dict):
                raise TypeError
        except (TypeError, ValueError):
            raise _not_npz(path, f"its {META_KEY!r} record is not zfraw's JSON metadata") from None
    elif require_meta:
        raise _not_npz(path, f"it has no {META_KEY!r} record (the architecture); "
                             f"its arrays are {', '.join(sorted(members)[:8]) or 'none'}")
    for k, v in members.items():
        if is_parameter(k):
            contents.params[k] = _check_param(path, k, v, allow_float16)
        elif "." not in k and not k.startswith("__"):
            contents.arrays[k] = v
        else:
            contents.other[k] = v
    if require_meta and not isinstance(contents.spec, dict):
        raise _not_npz(path, "its metadata has no architecture ('spec')")
    return contents


def read_meta(path):
    """The metadata of a zfraw file: ``{"spec": ..., "extra": ...}`` (extra arrays merged into extra)."""
    contents = read(path, allow_float16=True, require_meta=True)
    meta = dict(contents.meta)
    meta["extra"] = contents.extra
    return meta
