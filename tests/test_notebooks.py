"""The example notebooks run from top to bottom, in their fast mode (SKFLOW_FAST=1).

Each notebook is executed with nbclient on a copy in a temporary folder, so the saved outputs in
``notebooks/`` are never overwritten. The data notebooks read ``$SKFLOW_DATA``, set here to the
shared development data folder (see ``conftest.shared_data_dir``); they are skipped when it lacks
the files they need.
"""

import shutil

import pytest

from .conftest import REPO, shared_data_dir

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")
pytest.importorskip("pandas")

NOTEBOOKS = REPO / "notebooks"
ODDS_FILES = [f"odds/{name}.npz" for name in ("thyroid", "cardio", "mammography", "annthyroid")]
NEEDS = {
    "01_toy_gallery.ipynb": [],
    "02_model_selection.ipynb": [],
    "03_anomaly_detection.ipynb": ODDS_FILES,
    "04_miniboone.ipynb": ["maf_miniboone/val.npy", "maf_miniboone/test.npy"],
}


def test_every_notebook_is_tested():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NEEDS)


def test_the_notebooks_a_user_opens_first_run_offline():
    # Numbered in the order to read them: the first ones need no download.
    first = sorted(NEEDS)[:2]
    assert all(not NEEDS[name] for name in first), first


def test_saved_notebooks_have_outputs_and_no_errors():
    # The notebooks are committed with the outputs (and plots) of a full run.
    for name in NEEDS:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        code = [cell for cell in nb.cells if cell.cell_type == "code"]
        assert code and all(cell.get("execution_count") for cell in code), name
        outputs = [out for cell in code for out in cell.outputs]
        assert not [out for out in outputs if out.output_type == "error"], name
        assert any("image/png" in out.get("data", {}) for out in outputs), name
        source = "".join(cell.source for cell in code)
        assert 'os.environ.get("SKFLOW_FAST")' in source, name


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_notebook_runs_in_fast_mode(name, tmp_path, monkeypatch):
    data = shared_data_dir()
    missing = [f for f in NEEDS[name] if not (data / f).is_file()]
    if missing:
        pytest.skip(f"{name} needs {', '.join(missing)} under {data} (set SKFLOW_TEST_DATA)")
    copy = tmp_path / name
    shutil.copy(NOTEBOOKS / name, copy)
    before = (NOTEBOOKS / name).read_bytes()
    monkeypatch.setenv("SKFLOW_FAST", "1")
    monkeypatch.setenv("SKFLOW_DATA", str(data))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # One torch thread in the kernel, as in the test process: tiny models run fastest so.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(copy, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    nbformat.write(nb, copy)
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if out.output_type == "error"]
    assert not errors
    assert all(cell.execution_count for cell in nb.cells if cell.cell_type == "code")
    # The fast mode was really on (each notebook prints its FAST flag).
    printed = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                      for out in cell.outputs if out.output_type == "stream")
    assert "FAST=True" in printed
    assert (NOTEBOOKS / name).read_bytes() == before
