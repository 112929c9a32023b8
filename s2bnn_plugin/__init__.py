"""s2bnn-plugin: self-supervised 1-bit networks (S2-BNN) for solo-learn.

Importing this package needs neither solo-learn nor any compiled code. Its layers:
CONTRIBUTING.md, "Architecture".
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "create_backbone", "list_backbones"]


def __getattr__(name: str):
    """``create_backbone`` / ``list_backbones`` from :mod:`s2bnn_plugin.backbones`, imported on
    first use: that imports torch (about a second), which ``s2bnn --help`` does not need."""
    if name in ("create_backbone", "list_backbones"):
        from s2bnn_plugin import backbones

        return getattr(backbones, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
