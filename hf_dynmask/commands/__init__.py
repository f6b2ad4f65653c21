"""The ``hf-dynmask`` command line and what only it uses: ``demo``, ``bench``, ``inspect``.

The top layer: it may import every other part of the package; nothing imports it.
"""
