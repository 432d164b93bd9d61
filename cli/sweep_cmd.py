"""Commands registered on the shared app (filled in by their issue)."""

from .app import app  # noqa: F401
