"""Maps the architecture folders onto the one import package ``modelhall``.

``registry/`` on disk is ``modelhall.registry`` in code (see DESIGN.md); pyproject.toml
alone cannot express a package list derived from several folders, so it lives here.
"""

from setuptools import find_namespace_packages, find_packages, setup

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
        # The templates are data, but every folder of them is importable: listed as (namespace)
        # packages, setuptools ships their files without a warning for each.
        found = find_namespace_packages(folder) if package == "modelhall.templates" else find_packages(folder)
        packages.extend(f"{package}.{sub}" for sub in found)
    return packages


setup(packages=_packages(), package_dir=FOLDERS)
