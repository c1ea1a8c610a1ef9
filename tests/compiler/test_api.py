"""The Python API of SPEC.md: names importable from convspec.compiler are the functions."""

import subprocess
import sys


def test_lazy_api_names_are_functions_even_after_submodule_imports():
    code = (
        "import convspec.compiler.training.loop, convspec.compiler.tuning.study, convspec.compiler.export.onnx\n"
        "from convspec.compiler import build_model, export_onnx, train, tune\n"
        "assert all(callable(f) and type(f).__name__ == 'function' for f in (build_model, export_onnx, train, tune)), "
        "(build_model, export_onnx, train, tune)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_importing_the_compiler_package_does_not_import_torch():
    code = "import sys, convspec.compiler, convspec.compiler.cli; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
