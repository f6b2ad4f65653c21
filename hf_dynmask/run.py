"""``python -m hf_dynmask.run <script.py> [arguments...]``: a script run with hf_dynmask imported (the launcher
lives in :mod:`hf_dynmask.commands.run`; this module is only its ``-m`` entry point)."""

from .commands.run import main

if __name__ == "__main__":
    main()
