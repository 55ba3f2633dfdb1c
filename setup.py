"""Compiles the per-event code with Cython: the features (stream_processor/features.py, typed
by features.pxd), decoding (fraudstream/schema.py, as it is) and the walk of the model's trees
(stream_processor/treewalk.pyx; model.py has the same walk in NumPy).

Everything else about the package is in pyproject.toml. The extensions are optional: without a
C compiler the build goes on and the modules run as plain Python, with the same results, slower
(docs/benchmarks.md).
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

COMPILED_MODULES = ("stream_processor.features", "fraudstream.schema")  # plain Python too
CYTHON_MODULES = ("stream_processor.treewalk",)  # Cython only (.pyx), with a NumPy fallback

setup(
    ext_modules=cythonize(
        [
            Extension(name, [name.replace(".", "/") + ".py"], optional=True)
            for name in COMPILED_MODULES
        ]
        + [
            Extension(name, [name.replace(".", "/") + ".pyx"], optional=True)
            for name in CYTHON_MODULES
        ],
        build_dir="build/cython",
        compiler_directives={"language_level": 3, "annotation_typing": False},
    )
)
