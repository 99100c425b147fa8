"""The NumPy twin's engine: the reference layers' network, faster (``FastNetwork``).

Its modules are mapped in docs/architecture.md and explained in docs/performance.md ("The
engine"). Nothing here is needed to learn the maths (``numpy_nn/layers.py``,
docs/derivations.md); each block is tested equal to the reference layers it replaces."""

from twinnet.numpy_nn.fast.fast_network import FastNetwork

__all__ = ["FastNetwork"]
