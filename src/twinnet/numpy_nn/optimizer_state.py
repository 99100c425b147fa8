"""The optimizers' state as a flat dict of arrays, for checkpoints.

SGD keeps only ``iterations`` (a 0-d int64 array, the number of updates, kept as Keras
does so that checkpoints of both twins hold the same keys); Adam adds its slots as
``<param>/m`` and ``<param>/v``.
"""

from __future__ import annotations

import numpy as np

from twinnet.numpy_nn.optimizers import SGD, Adam


def state_dict(opt: SGD | Adam) -> dict[str, np.ndarray]:
    """Copies of ``opt``'s state: ``iterations`` and, for Adam, every slot."""
    out: dict[str, np.ndarray] = {"iterations": np.array(opt.iterations, dtype=np.int64)}
    for key in getattr(opt, "m", {}):
        out[f"{key}/m"] = opt.m[key].copy()
        out[f"{key}/v"] = opt.v[key].copy()
    return out


def load_state_dict(opt: SGD | Adam, state: dict[str, np.ndarray]) -> None:
    """Restore what ``state_dict`` returned; an empty dict resets ``opt`` to a fresh one.
    ValueError for keys that are not ``opt``'s."""
    if isinstance(opt, SGD):
        if set(state) - {"iterations"}:
            raise ValueError(f"SGD keeps only 'iterations', got keys {sorted(state)}")
        opt.iterations = int(state.get("iterations", 0))
        return
    if not state:
        opt.iterations, opt.m, opt.v = 0, {}, {}
        return
    if "iterations" not in state:
        raise ValueError("Adam state lacks 'iterations'")
    m = {k[: -len("/m")]: np.array(a, copy=True) for k, a in state.items() if k.endswith("/m")}
    v = {k[: -len("/v")]: np.array(a, copy=True) for k, a in state.items() if k.endswith("/v")}
    unknown = set(state) - {"iterations"} - {f"{k}/m" for k in m} - {f"{k}/v" for k in v}
    if set(m) != set(v) or unknown:
        raise ValueError(f"malformed Adam state: keys {sorted(state)}")
    opt.iterations, opt.m, opt.v = int(state["iterations"]), m, v
