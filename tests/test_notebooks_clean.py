"""The committed notebooks hold no outputs and are exactly what notebooks/build.py writes.

Outputs (figures, audio, timings) would make every diff unreadable and the
repository heavy, so the notebooks are committed bare and executed in CI instead
(``pytest --nbmake notebooks/``). These checks are static and take well under a second.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from types import ModuleType

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "notebooks"
NOTEBOOKS = ["01_data.ipynb", "02_zero_shot_rates.ipynb", "03_streaming.ipynb"]
#: a bare notebook of ours is 10-25 kB; one saved with outputs is hundreds
MAX_BYTES = 40_000
#: what build.py writes; Jupyter adds more (widgets, toc, ...) when it saves a notebook
NOTEBOOK_METADATA = {"kernelspec", "language_info"}


def load_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("notebooks_build", FOLDER / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_three_notebooks_are_there_and_no_others():
    assert sorted(p.name for p in FOLDER.glob("*.ipynb")) == NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_has_no_outputs_and_stays_small(name):
    path = FOLDER / name
    assert path.stat().st_size < MAX_BYTES, f"{name} is {path.stat().st_size} bytes"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert set(nb.metadata) <= NOTEBOOK_METADATA, f"{name}: extra metadata {set(nb.metadata)}"
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for i, cell in enumerate(nb.cells):
        assert not cell.metadata, f"{name} cell {i}: metadata {dict(cell.metadata)}"
        assert "attachments" not in cell, f"{name} cell {i} has attachments"
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name} cell {i} has outputs"
            assert cell.execution_count is None, f"{name} cell {i} has an execution count"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_code_cells_are_valid_python(name):
    nb = nbformat.read(FOLDER / name, as_version=4)
    code = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    assert len(code) >= 4, f"{name} has only {len(code)} code cells"
    for i, source in enumerate(code):
        try:
            ast.parse(source)
        except SyntaxError as err:
            pytest.fail(f"{name} code cell {i}: {err}")


def test_committed_notebooks_are_what_build_py_writes(tmp_path):
    build = load_build()
    written = build.build(tmp_path)
    assert [p.name for p in written] == NOTEBOOKS
    for path in written:
        assert (FOLDER / path.name).read_text() == path.read_text(), (
            f"notebooks/{path.name} differs from notebooks/build.py: edit the cells in build.py "
            "and run `.venv/bin/python notebooks/build.py` (never save an executed notebook)"
        )
    assert build.stale(FOLDER) == []


def test_build_is_deterministic_and_stale_catches_a_saved_execution(tmp_path):
    build = load_build()
    first = [p.read_text() for p in build.build(tmp_path / "a")]
    second = [p.read_text() for p in build.build(tmp_path / "b")]
    assert first == second
    assert build.stale(tmp_path / "a") == []
    # what Jupyter leaves behind when an executed notebook is saved
    path = tmp_path / "a" / NOTEBOOKS[1]
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code")
    cell.execution_count = 1
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello\n")]
    nbformat.write(nb, path)
    (tmp_path / "a" / NOTEBOOKS[2]).unlink()
    assert build.stale(tmp_path / "a") == NOTEBOOKS[1:]


def test_every_notebook_starts_from_the_shared_setup_cell():
    build = load_build()
    for name in NOTEBOOKS:
        nb = nbformat.read(FOLDER / name, as_version=4)
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
        assert nb.cells[1].source == build.SETUP


def test_readme_describes_every_notebook():
    readme = (FOLDER / "README.md").read_text()
    for name in NOTEBOOKS:
        assert name in readme, f"notebooks/README.md does not mention {name}"
    assert "--nbmake" in readme
