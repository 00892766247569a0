"""pyproject.toml lists its packages by hand: every package folder must be in the list, or a regular install
(`pip install .`, the Docker image) ships without it while the editable install of a checkout still works."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_listed():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {name: REPO / folder for name, folder in project["package-dir"].items()}
    found = {
        ".".join([root, *init.parent.relative_to(folder).parts])
        for root, folder in roots.items() for init in folder.rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert found == set(project["packages"])
