"""Shared fixtures of the 2-process tests (test_distributed.py: DDP, test_fsdp.py: FSDP2).

One launch serves both files, because starting two Python processes that import transformers costs more than all
the training they do: ``OMP_NUM_THREADS=1 {distributed_train.LAUNCH} OUT_DIR``.

The single-process references run in the test process, once per distinct reference (:attr:`Run.reference`).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPT = Path(__file__).with_name("distributed_train.py")


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("distributed_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def script() -> ModuleType:
    return load_script()


@pytest.fixture(scope="session")
def two_process_dir(script, tmp_path_factory) -> Path:
    """The launch's output folder: ``results.pt``, ``fsdp-checkpoints/``, ``fsdp-final/``."""
    out = tmp_path_factory.mktemp("two-processes")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, *script.LAUNCH.split()[1:-1], str(SCRIPT), str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def two_process_results(two_process_dir) -> dict:
    return torch.load(two_process_dir / "results.pt", weights_only=False)


@pytest.fixture(scope="session")
def one_process_result(script, tmp_path_factory) -> Callable[[str], dict]:
    """``result(name)``: the single-process run of the same global batches as the 2-process run ``name``."""
    tok = script.tokenizer()
    out = str(tmp_path_factory.mktemp("single"))
    cache: dict[tuple, dict] = {}

    def result(name: str) -> dict:
        key = script.RUNS[name].reference
        if key not in cache:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                cache[key] = script.train_run(name, world_size=1, output_dir=out, tok=tok)
            finally:
                torch.set_num_threads(threads)
        return cache[key]

    return result
