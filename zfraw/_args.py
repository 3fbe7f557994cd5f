"""Argument checks shared by the modules: a bad argument is an error that names it."""
import numbers


def int_arg(name, v, minimum):
    """``v`` as an int >= ``minimum``; TypeError (not an int, or a bool) or ValueError naming ``name``."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return int(v)


def pair_arg(name, v, minimum):
    """An int or a pair of ints (h, w), each >= ``minimum`` -> (h, w)."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair (h, w), got {v!r}")
        return int_arg(name, v[0], minimum), int_arg(name, v[1], minimum)
    v = int_arg(name, v, minimum)
    return v, v


def layers_arg(name, layers, net):
    """A layer name or a sequence of them -> a non-empty list of layers of ``net``; ValueError naming ``name``."""
    layers = [layers] if isinstance(layers, str) else list(layers)
    if not layers:
        raise ValueError(f"{name} must name at least one layer, got none")
    for lyr in layers:
        if lyr not in net.layers:
            raise ValueError(f"{name}: {lyr!r} is not a layer of this network; its layers are {', '.join(net.names)}")
    return layers


def shape_arg(name, v, lengths, minimum=1):
    """A shape given as a tuple/list of ints -> tuple of ints, each >= ``minimum``.

    ``lengths`` is the allowed numbers of entries.  A string (``"44"`` would
    otherwise iterate as ``("4", "4")``), a float entry (4.7) or a bool is a
    ``TypeError``; a wrong length or a too-small entry a ``ValueError``; each
    names ``name``.
    """
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
        raise TypeError(f"{name} must be a tuple of ints, got {type(v).__name__} {v!r}")
    items = tuple(v)
    for s in items:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            raise TypeError(f"{name} must be a tuple of ints, got {v!r} (entry {s!r} is a {type(s).__name__})")
    if len(items) not in lengths:
        raise ValueError(f"{name} must have {' or '.join(map(str, lengths))} entries, got {len(items)} in {v!r}")
    if items and min(items) < minimum:
        raise ValueError(f"{name} must hold sizes >= {minimum}, got {tuple(int(s) for s in items)}")
    return tuple(int(s) for s in items)
