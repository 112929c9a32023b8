"""s2bnn-plugin: self-supervised 1-bit networks (S2-BNN) for solo-learn.

Importing this package needs neither solo-learn nor any compiled code. Layout:
``nn`` (quantizers, binary layers) <- ``backbones`` <- ``methods`` / ``export``
<- ``solo`` / ``cli``.
"""

from s2bnn_plugin.backbones import create_backbone, list_backbones

__version__ = "0.1.0"

__all__ = ["__version__", "create_backbone", "list_backbones"]
