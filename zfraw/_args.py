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
