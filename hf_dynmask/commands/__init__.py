"""The ``hf-dynmask`` command line and what only it uses: ``demo``, ``bench``, ``inspect``; and the launcher that runs
stock scripts with hf_dynmask registered (``run.py``, ``python -m hf_dynmask.run <script.py> ...``).

The top layer: it may import every other part of the package; nothing imports it but the launcher's ``-m`` entry
point, ``hf_dynmask/run.py``.
"""
