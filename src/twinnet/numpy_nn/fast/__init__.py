"""The NumPy twin's engine (``FastNetwork``): the reference layers' network, faster, each block
tested equal to the layers it replaces. Nothing here is needed to learn the maths; its modules:
docs/architecture.md and docs/performance.md ("The engine")."""

from twinnet.numpy_nn.fast.fast_network import FastNetwork

__all__ = ["FastNetwork"]
