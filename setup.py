"""Compiles the per-event feature code (stream_processor/features.py) with Cython.

Everything else about the package is in pyproject.toml. The extension is optional: without a C
compiler the build goes on and features.py runs as plain Python, with the same results, slower
(docs/benchmarks.md).
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("stream_processor.features", ["stream_processor/features.py"], optional=True)],
        build_dir="build/cython",
        compiler_directives={"language_level": 3, "annotation_typing": False},
    )
)
