"""Analyses of a trained network: they compute arrays and records and never draw.

One module per question the paper asks of a network (Zeiler & Fergus 2014):

- :mod:`zfraw.analysis.topk` — the streaming top-k scan of the strongest
  activations of every feature (fig. 2);
- :mod:`zfraw.analysis.occlusion` — occlusion sensitivity (fig. 7);
- :mod:`zfraw.analysis.correspondence` — correspondence of object parts (table 1);
- :mod:`zfraw.analysis.boxes` — boxes files over the parts of a user's own images;
- :mod:`zfraw.analysis.invariance` — invariance to translation, scale, rotation (fig. 5);
- :mod:`zfraw.analysis.evolution` — feature evolution over training (fig. 4);
- :mod:`zfraw.analysis.first_layer` — AlexNet's first layer against ZFNet's (fig. 6).

Pictures of their results are drawn by :mod:`zfraw.visualize` and :mod:`zfraw.render`.
"""
