"""Every size the engine cuts work by, in one place, measured as docs/performance.md says.
Tests may set them (``monkeypatch.setattr(budgets, ...)``): every use reads them here."""

import numpy  # noqa: F401 (loads the BLAS that threadpool_info reads)
from threadpoolctl import threadpool_info

# Training: a conv block runs its batch in chunks whose largest work array (an im2col
# matrix or a conv output) fits in this, written and read back in the core's own L2.
CHUNK_BYTES = 512 << 10
# Inference of a conv (by pooling windows, or by im2col rows): images per chunk so that one
# image's patch rows and products, times the chunk, fit in this.
INFERENCE_CHUNK_BYTES = 512 << 10
# Work arrays of the pooling-window inference are kept for this many chunk shapes (a
# batch has at most two).
KEPT_PLANS = 4
# Inference runs each image chunk through the whole network, chunks sized so that the
# largest activation takes at most this much: elementwise layers then run in cache.
ACTIVATION_BYTES = 1 << 20
# The same where every layer is a block that chunks its own work (the cnn): only the
# per-chunk calls are then paid, so chunks are larger.
BLOCK_ACTIVATION_BYTES = 8 << 20
# FastConv2D's input gradient runs by rows of dz where a row reaches at most this many
# kernels' width of columns (the rest of its product is multiply-adds by zero) and a
# tap's product, C_in wide, would be narrower than TAP_PRODUCT_WIDTH.
MAX_PATCH_WIDTHS, TAP_PRODUCT_WIDTH = 3, 16
# A conv's matmul: a BLAS call per image where one is at most this many multiply-adds, the
# bound of OpenBLAS's unpacked small-matrix kernels (SkylakeX, and Cooperlake: Zen 4); else one.
SMALL_KERNELS = {"SkylakeX", "Cooperlake", "SapphireRapids"}
SMALL_MATMUL = 100**3 if SMALL_KERNELS & {pool.get("architecture") for pool in threadpool_info()} else 0
# A batch part gets a core of its own only with at least this much matmul work (about
# half a millisecond's): a few images run faster on one thread than handed over.
MIN_PART_FLOPS = 50e6
# Inference cuts a part's worth of work into this many pieces for the cores to take in turn.
PIECES_PER_PART = 4
# Images inference hands out at a time (a whole MNIST split: the parameters are copied to
# the workers, and the cores wait for the last piece, once a call), and the first
# worker's shared room for them.
INPUT_IMAGES = 10_000
