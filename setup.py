"""Compiles the per-event code with Cython: the features (stream_processor/features.py, typed
by features.pxd), decoding (fraudstream/schema.py, with a few Cython decorators), the walk of
the model's trees (stream_processor/treewalk.pyx; model.py has the same walk in NumPy) and the
stored rows' text (stream_processor/rowtext.pyx; core.py has the same in Python).

Everything else about the package is in pyproject.toml. The extensions are optional: without a
C compiler the build goes on and the modules run as plain Python, with the same results, slower
(docs/benchmarks.md).
"""

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

COMPILED_MODULES = ("stream_processor.features", "fraudstream.schema")  # plain Python too
# Cython only (.pyx); the tree walk has a NumPy fallback in model.py, the rows' text a Python
# one in core.py
CYTHON_MODULES = ("stream_processor.treewalk", "stream_processor.rowtext")


class OptionalBuildExt(build_ext):
    """A module that does not compile (no C compiler) stays plain Python: a warning, no error.
    (``Extension(optional=True)`` alone still fails an editable install: it copies every
    module's build into the source tree, built or not.)"""

    def initialize_options(self):
        super().initialize_options()
        self.failed: set[str] = set()  # modules that did not compile

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - whatever the compiler's failure, go on
            self.failed.add(ext.name)
            self.warn(
                f"{ext.name} not compiled; its plain-Python code runs instead (slower): {exc}"
            )

    def copy_extensions_to_source(self):
        extensions = self.extensions
        self.extensions = [ext for ext in extensions if ext.name not in self.failed]
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = extensions


setup(
    cmdclass={"build_ext": OptionalBuildExt},
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
    ),
)
