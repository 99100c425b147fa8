"""The NumPy twin's engine: the same network as the reference layers, faster.

- ``budgets``: every chunk and budget constant;
- ``primitives``: measured fast array primitives (im2col as long copies, bias, ReLU, pooling);
- ``blocks``: fused blocks, each in place of a run of reference layers it names;
- ``pool_windows``: the conv -> ReLU -> pool block's inference form, by pooling windows;
- ``pixel_rows``: a conv's matmul with several output pixels to a row (inference);
- ``layer_blocks``: blocks for one layer each (any conv, tiling pools, activations, batch norm);
- ``folding``: conv -> batch norm -> ReLU -> pool, inferred with the batch norm folded
  into the conv;
- ``fusion``: the pass that replaces matching runs of layers with blocks;
- ``workers``: worker processes (multiprocessing) for the parts of a batch;
- ``fast_network``: ``FastNetwork``, the fused network with each batch split over the cores.

Nothing here is needed to learn the maths: that is ``numpy_nn/layers.py`` and
docs/derivations.md; the blocks call the lesson's functions wherever their form does not
change the maths. Each piece is tested equal to the reference layers it replaces.
"""

from twinnet.numpy_nn.fast.fast_network import FastNetwork

__all__ = ["FastNetwork"]
