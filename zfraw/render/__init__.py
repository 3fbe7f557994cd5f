"""Drawing the results of :mod:`zfraw.analysis` (one module per analysis).

Each function takes the arrays or records an analysis returned and gives a
PIL image (or writes a PNG); nothing here runs a network.  The core pictures
(projections, top-9 grids, filter montages) stay in :mod:`zfraw.visualize`.
"""
