"""The weights format: round trip, and every refusal with a clear one-line error."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from twinnet.models import MODEL_NAMES, init_params, param_shapes
from twinnet.weights import WeightsError, load_weights, save_weights


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_round_trip(tmp_path, model):
    params = init_params(model, seed=3)
    path = tmp_path / "w.npz"
    save_weights(path, model, params, {"backend": "numpy", "steps": 7})
    loaded, meta = load_weights(path, expected_model=model)
    assert meta == {"model": model, "backend": "numpy", "steps": 7}
    assert list(loaded) == list(param_shapes(model))
    for key in params:
        assert loaded[key].dtype == np.float32
        np.testing.assert_array_equal(loaded[key], params[key])


def test_plain_numpy_can_read_the_file(tmp_path):
    path = tmp_path / "w.npz"
    save_weights(path, "linear", init_params("linear"), {"backend": "tf"})
    with np.load(path, allow_pickle=False) as npz:
        assert json.loads(str(npz["meta"]))["model"] == "linear"
        assert npz["dense1/W"].shape == (784, 10)


def write_npz(path, arrays, meta=None, model="linear"):
    if meta is not False:
        arrays = {**arrays, "meta": np.array(json.dumps(meta or {"model": model}))}
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def expect_refusal(path, fragment, expected_model=None):
    with pytest.raises(WeightsError) as caught:
        load_weights(path, expected_model=expected_model)
    message = str(caught.value)
    assert str(path) in message and fragment in message, message
    assert "\n" not in message


def test_wrong_model(tmp_path):
    path = tmp_path / "w.npz"
    save_weights(path, "mlp128", init_params("mlp128"), {})
    expect_refusal(path, "holds weights for model 'mlp128', not 'cnn'", expected_model="cnn")


def test_missing_key(tmp_path):
    params = init_params("mlp128")
    del params["dense2/b"]
    expect_refusal(write_npz(tmp_path / "w.npz", params, model="mlp128"), "missing dense2/b")


def test_extra_key(tmp_path):
    params = {**init_params("linear"), "dense9/W": np.zeros((2, 2), np.float32)}
    expect_refusal(write_npz(tmp_path / "w.npz", params), "unexpected key(s) dense9/W")


def test_wrong_shape(tmp_path):
    params = {**init_params("linear"), "dense1/W": np.zeros((10, 784), np.float32)}
    expect_refusal(write_npz(tmp_path / "w.npz", params), "shape (10, 784), expected (784, 10)")


def test_wrong_dtype(tmp_path):
    params = {k: v.astype(np.float64) for k, v in init_params("linear").items()}
    expect_refusal(write_npz(tmp_path / "w.npz", params), "dtype float64, expected float32")


def test_nan_values(tmp_path):
    params = init_params("linear")
    params["dense1/b"][3] = np.nan
    expect_refusal(write_npz(tmp_path / "w.npz", params), "NaN or infinite")


def test_pickled_object_array_is_never_unpickled(tmp_path):
    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("unpickled!",))

    params = {**init_params("linear"), "dense1/b": np.array([Boom()], dtype=object)}
    expect_refusal(write_npz(tmp_path / "w.npz", params), "pickled object arrays")


def test_a_pickle_file_is_not_an_npz(tmp_path):
    path = tmp_path / "w.npz"
    path.write_bytes(pickle.dumps({"dense1/W": 1}))
    expect_refusal(path, "not a valid .npz")


def test_text_file(tmp_path):
    path = tmp_path / "w.npz"
    path.write_text("hello")
    expect_refusal(path, "not a valid .npz")


def test_missing_meta(tmp_path):
    expect_refusal(write_npz(tmp_path / "w.npz", init_params("linear"), meta=False), "no 'meta'")


def test_unreadable_meta(tmp_path):
    arrays = {**init_params("linear"), "meta": np.array("{not json")}
    with open(tmp_path / "w.npz", "wb") as fh:
        np.savez(fh, **arrays)
    expect_refusal(tmp_path / "w.npz", "unreadable 'meta'")


def test_unknown_model(tmp_path):
    path = write_npz(tmp_path / "w.npz", init_params("linear"), meta={"model": "resnet"})
    expect_refusal(path, "unknown model 'resnet'")


def test_missing_file(tmp_path):
    expect_refusal(tmp_path / "nope.npz", "no such file")


def test_save_is_atomic_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "w.npz"
    save_weights(path, "linear", init_params("linear"), {})
    bad = init_params("linear")
    bad["dense1/W"] = bad["dense1/W"][:5]
    with pytest.raises(WeightsError):
        save_weights(path, "linear", bad, {})
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]
    load_weights(path)  # the earlier file is intact
