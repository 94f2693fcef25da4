"""Which files the wheel holds, and under which import names (the metadata is in pyproject.toml).

One top-level package, ``lorasmith``: the entrypoint packages and recipe folders of the repository's root (``train/``,
``eval/``, ``data_utils/``, ``configs/``, ``accelerate_configs/``) are installed inside it, in ``lorasmith/_app/``,
with the repository's layout, so installing lorasmith never puts a module named ``train`` or ``eval`` on anyone's
path (``lorasmith/project_files.py`` says who reads them from there).
"""

from setuptools import find_namespace_packages, find_packages, setup

ENTRYPOINT_PACKAGES = ("train", "eval", "data_utils")
FOLDERS = ("configs", "accelerate_configs")

setup(
    packages=[
        *find_packages(include=["lorasmith", "lorasmith.*"]),
        *(f"lorasmith._app.{name}" for name in find_packages(include=[f"{p}{s}" for p in ENTRYPOINT_PACKAGES for s in ("", ".*")])),
        *(f"lorasmith._app.{name}" for name in find_namespace_packages(include=[f"{f}{s}" for f in FOLDERS for s in ("", ".*")])),
    ],
    package_dir={f"lorasmith._app.{name}": name for name in (*ENTRYPOINT_PACKAGES, *FOLDERS)},
    package_data={"": ["*.yaml"], "lorasmith._app.data_utils.samples": ["*"]},
)
