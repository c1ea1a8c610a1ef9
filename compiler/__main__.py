"""``python -m convspec.compiler`` is the ``convspec`` command (and torchrun's entry point)."""

from convspec.compiler.cli import main

main()
