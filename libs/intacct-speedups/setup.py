"""Builds the Cython extension against lxml's headers (see pyproject.toml for the rest)."""

import lxml
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [
            Extension(
                "arbridge_intacct_speedups._records",
                ["src/arbridge_intacct_speedups/_records.pyx"],
                include_dirs=lxml.get_include(),
            )
        ],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    )
)
