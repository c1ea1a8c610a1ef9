"""The error of a search."""

from __future__ import annotations

from convspec.specs import ConvspecError


class TuneError(ConvspecError):
    """A search that cannot start (no tune section, bad storage) or found nothing."""
