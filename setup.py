"""Builds the wheel with the repository's shipped files inside the package (see offrl/shipped.py).

`datasets/` is the one source: the behaviour policies (`policies/<env>/<tier>.pt` + card) and the cards of
offrl's own dataset ids are copied into `offrl/_shipped/` of the build; the HDF5 files are never shipped.
"""

from pathlib import Path
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

SOURCE = Path(__file__).resolve().parent / "datasets"


class BuildWithShippedFiles(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "offrl" / "_shipped"
        if target.exists():
            shutil.rmtree(target)
        for path in sorted(SOURCE.rglob("*")):
            if path.is_file() and path.suffix in (".json", ".pt"):
                destination = target / path.relative_to(SOURCE)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, destination)


setup(cmdclass={"build_py": BuildWithShippedFiles})
