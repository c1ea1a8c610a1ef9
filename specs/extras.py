"""Optional extras: import a heavy library, or say which extra installs it.

Used by every layer (specs, compiler, runtime) for ``timm``, ``serve`` and ``track``
features, so that a missing library reads the same everywhere.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import ConvspecError


class MissingExtra(ConvspecError):
    """A feature needs an optional dependency that is not installed."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module``, or raise MissingExtra naming ``pip install "convspec[extra]"``.

    Args:
        module: the import name (``"timm"``, ``"fastapi"``).
        extra: the convspec extra that installs it (``"timm"``, ``"serve"``, ``"track"``).
        feature: what the user asked for, for the message (``"backbone layers"``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtra(
            f"{feature} need(s) the {module!r} package, which is not installed ({e.name or module}); "
            f'install the extra: pip install "convspec[{extra}]"'
        ) from None
