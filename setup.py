"""Maps the architecture folders onto the one import package ``modelhall``.

``registry/`` on disk is ``modelhall.registry`` in code (see DESIGN.md); pyproject.toml
alone cannot express a package list derived from several folders, so it lives here.
"""

from setuptools import find_packages, setup

FOLDERS = {
    "modelhall": "modelhall",
    "modelhall.registry": "registry",
    "modelhall.showcase": "showcase",
    "modelhall.adapters": "adapters",
    "modelhall.templates": "templates",
}


def _packages() -> list[str]:
    packages = []
    for package, folder in FOLDERS.items():
        packages.append(package)
        packages.extend(f"{package}.{sub}" for sub in find_packages(folder))
    return packages


setup(packages=_packages(), package_dir=FOLDERS)
