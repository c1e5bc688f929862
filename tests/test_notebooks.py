"""Every notebook under ``notebooks/`` runs top to bottom, offline, in a fresh kernel.

The kernel is the ``python3`` kernelspec that ``ipykernel`` installs into the venv; jupyter_client
starts it with this interpreter (``sys.executable``), checked by a last cell added here. It gets the
suite's isolated environment (no provider keys, a temporary ``HOME``) and runs in a temporary
directory, so nothing a notebook writes lands in the checkout.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def _kernel_env() -> dict[str, str]:
    env = dict(os.environ)
    # A notebook user has one CPU device; the suite's 8 fake ones are for the sharding tests.
    env.pop("XLA_FLAGS", None)
    env["JAX_PLATFORMS"] = "cpu"
    return env


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute(env=_kernel_env())

    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    assert not [out for out in outputs if out.output_type == "error"]
    assert nb.cells[-1].outputs[0]["text"].strip() == sys.executable, "the kernel is not this venv's python"


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, "no notebooks found under notebooks/"
