"""App support: what only the U-Net Studio app needs, on top of the engine (:mod:`unet_core`).

- :mod:`.sources` and :mod:`.uploads`: the data a page works on (synthetic, a folder, a zip).
- :mod:`.browse`: views and statistics for the pages (samples, thumbnails, weight-map parts, model facts).
- :mod:`.registry`: the model menu (shipped models and finished runs) and which images a model saw.
- :mod:`.jobs`, :mod:`.runs`, :mod:`.runlock`, :mod:`.processes`: training runs in the background.
- :mod:`.visualize`: display helpers (overlays, contrast, curve smoothing).

The engine never imports this package, and this package never imports torch (a training run is a
child process); ``tests/test_layers.py`` checks both.
"""
