"""Prediction on users' own images: preparation as MNIST was made, bad files, real digits."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from twinnet.predict import ImageError, format_predictions, predict_images, prepare_image


def draw_seven(size: tuple[int, int] = (300, 400), offset: tuple[int, int] = (0, 0),
               ink: int = 255, paper: int = 0) -> Image.Image:
    """A thick-stroked '7' on an 8-bit canvas (width, height), shifted by ``offset``."""
    image = Image.new("L", size, paper)
    draw = ImageDraw.Draw(image)
    dx, dy = offset
    draw.line([(60 + dx, 80 + dy), (220 + dx, 80 + dy), (120 + dx, 330 + dy)], fill=ink, width=28)
    return image


def save(image: Image.Image, path: Path) -> str:
    image.save(path)
    return str(path)


def centre_of_mass(prepared: np.ndarray) -> tuple[float, float]:
    digit = prepared[..., 0].astype(np.float64)
    idx = np.arange(digit.shape[0])
    return (digit.sum(1) @ idx) / digit.sum(), (digit.sum(0) @ idx) / digit.sum()


class ConstantModel:
    """Stands in for a backend: logits (N, 10) that always say 7, by a margin so huge that
    an unshifted softmax would overflow, with 3 as the runner-up."""

    eval_batch = 1000

    def logits(self, x: np.ndarray) -> np.ndarray:
        assert x.shape[1:] == (28, 28, 1) and x.dtype == np.float32
        logits = np.zeros((len(x), 10), np.float32)
        logits[:, 7] = 1000.0
        logits[:, 3] = 990.0
        return logits


def test_output_is_mnist_shaped(tmp_path):
    prepared = prepare_image(save(draw_seven(), tmp_path / "seven.png"))
    assert prepared.shape == (28, 28, 1) and prepared.dtype == np.float32
    assert prepared.min() >= 0.0 and prepared.max() <= 1.0 and prepared.max() > 0.9
    rows = np.flatnonzero(prepared[..., 0].any(axis=1))
    cols = np.flatnonzero(prepared[..., 0].any(axis=0))
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 == 20  # longer side, as in MNIST
    assert prepared[0].max() == 0 and prepared[:, 0].max() == 0  # the border stays black


def test_both_polarities_give_the_same_array(tmp_path):
    light = prepare_image(save(draw_seven(ink=255, paper=0), tmp_path / "light.png"))
    dark = prepare_image(save(draw_seven(ink=0, paper=255), tmp_path / "dark.png"))
    np.testing.assert_allclose(dark, light, atol=1e-6)


def test_grey_paper_and_jpeg(tmp_path):
    reference = prepare_image(save(draw_seven(), tmp_path / "ref.png"))
    photo = prepare_image(save(draw_seven(ink=40, paper=190), tmp_path / "photo.jpg"))
    assert np.abs(photo - reference).mean() < 0.03


def test_off_centre_digit_is_recentred(tmp_path):
    centred = prepare_image(save(draw_seven(), tmp_path / "centred.png"))
    corner = draw_seven(size=(900, 700), offset=(550, 320))
    moved = prepare_image(save(corner, tmp_path / "corner.png"))
    row, col = centre_of_mass(moved)
    assert abs(row - 14) <= 0.5 and abs(col - 14) <= 0.5
    np.testing.assert_allclose(moved, centred, atol=1e-6)


def test_rgba_is_composited_on_white(tmp_path):
    reference = prepare_image(save(draw_seven(ink=0, paper=255), tmp_path / "ref.png"))
    rgba = Image.new("RGBA", (300, 400), (0, 0, 0, 0))  # transparent *black*: must read as white
    rgba.paste((20, 20, 20, 255), mask=draw_seven())
    prepared = prepare_image(save(rgba, tmp_path / "rgba.png"))
    np.testing.assert_allclose(prepared, reference, atol=0.02)


def test_sixteen_bit_and_palette(tmp_path):
    reference = prepare_image(save(draw_seven(), tmp_path / "ref.png"))
    wide = np.asarray(draw_seven(), dtype=np.uint16) * 257
    sixteen = tmp_path / "sixteen.png"
    Image.fromarray(wide).save(sixteen)
    assert Image.open(sixteen).mode.startswith("I")
    np.testing.assert_allclose(prepare_image(str(sixteen)), reference, atol=1e-5)
    palette = draw_seven(ink=0, paper=255).convert("RGB").convert("P")
    np.testing.assert_allclose(prepare_image(save(palette, tmp_path / "p.gif")), reference, atol=0.02)


@pytest.mark.parametrize("kind, fragment", [
    ("text", "cannot identify image file"),
    ("blank", "blank image"),
    ("missing", "no such file"),
    ("folder", "is a directory"),
    ("truncated", "cannot"),
])
def test_bad_files_raise_image_error_naming_the_file(tmp_path, kind, fragment):
    path = tmp_path / f"{kind}.png"
    if kind == "text":
        path.write_text("not an image")
    elif kind == "blank":
        Image.new("L", (50, 50), 200).save(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "truncated":
        save(draw_seven(), path)
        path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ImageError) as caught:
        prepare_image(path)
    message = str(caught.value)
    assert str(path) in message and fragment in message and "\n" not in message


def test_bad_files_do_not_stop_the_others(tmp_path):
    good = save(draw_seven(), tmp_path / "seven.png")
    bad = tmp_path / "bad.txt"
    bad.write_text("hello")
    blank = save(Image.new("L", (40, 40), 0), tmp_path / "blank.png")
    also_good = save(draw_seven(ink=0, paper=255, offset=(30, 0)), tmp_path / "seven2.png")
    results = predict_images(ConstantModel(), [good, str(bad), blank, also_good])
    assert [r["file"] for r in results] == [good, str(bad), blank, also_good]
    assert "cannot identify image file" in results[1]["error"]
    assert "blank image" in results[2]["error"]
    for result in (results[0], results[3]):
        assert set(result) == {"file", "digit", "top3"}
        (best, p_best), *rest = result["top3"]
        assert best == result["digit"] == 7 and len(rest) == 2
        assert p_best == pytest.approx(1.0, abs=1e-4) and all(np.isfinite(p) for _, p in rest)
        assert rest[0][0] == 3  # the runner-up, 10 below
    text = format_predictions(results).splitlines()
    assert len(text) == 4
    assert text[0].startswith(f"{good}: 7  (7 100.0%, 3 0.0%, ")
    assert text[1].startswith(f"{bad}: error: cannot identify image file")


def test_format_predictions():
    results = [{"file": "digit.png", "digit": 7, "top3": [[7, 0.991], [1, 0.005], [9, 0.002]]},
               {"file": "bad.txt", "error": "cannot identify image file"}]
    assert format_predictions(results) == (
        "digit.png: 7  (7 99.1%, 1 0.5%, 9 0.2%)\nbad.txt: error: cannot identify image file")


def write_mnist_pngs(images: np.ndarray, folder: Path, invert: bool) -> list[str]:
    paths = []
    for i, image in enumerate(images):
        pixels = np.rint(image[..., 0] * 255).astype(np.uint8)
        pixels = 255 - pixels if invert else pixels
        path = folder / f"{i}-{int(invert)}.png"
        Image.fromarray(pixels).resize((200, 200), Image.Resampling.BICUBIC).save(path)
        paths.append(str(path))
    return paths


@pytest.mark.slow
@pytest.mark.tf
def test_real_digits_get_the_models_own_answers(mnist, tmp_path):
    pytest.importorskip("tensorflow")
    from twinnet.metrics import predict_logits
    from twinnet.training import TrainConfig, train

    config = TrainConfig(model="mlp128", backend="tf", optimizer="adam", lr=0.001, steps=300)
    model, _ = train(config, mnist, progress=False)
    x = mnist.test.x[:100]
    reference = predict_logits(model, x).argmax(axis=1)
    for invert in (False, True):
        results = predict_images(model, write_mnist_pngs(x, tmp_path, invert))
        agreement = np.mean([r["digit"] for r in results] == reference)
        assert agreement >= 0.95, f"invert={invert}: agreement {agreement:.2%}"


def test_predict_command(tmp_path, capsys):
    from twinnet.cli import main
    from twinnet.models import init_params
    from twinnet.weights import save_weights

    weights = tmp_path / "w.npz"
    save_weights(weights, "mlp128", init_params("mlp128"), {"backend": "numpy"})
    good = save(draw_seven(), tmp_path / "seven.png")
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    assert main(["predict", good, str(bad), "--weights", str(weights)]) == 2
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{good}: ") and "%" in captured.out
    assert len(captured.out.strip().splitlines()) == 1
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and str(bad) in errors[0] and "cannot identify image" in errors[0]
    assert main(["predict", good, "--weights", str(weights), "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["file"] == good and len(result["top3"]) == 3


# ---- issue 24: memory bounded by the decoded size of each format --------------------------

def big_digit(mode: str, side: int) -> Image.Image:
    """A ``side`` x ``side`` image of one dark bar on white, in ``mode``: a few KB compressed."""
    image = Image.new(mode, (side, side), "white")
    bar = (side // 2 - side // 20, side // 5, side // 2 + side // 20, side * 4 // 5)
    ImageDraw.Draw(image).rectangle(bar, fill="black")
    return image


def test_decode_cost_depends_on_the_format(tmp_path, monkeypatch):
    # Before: only the pixel count was bounded (40 MP at an assumed 10 bytes a pixel), so a
    # 5 KB lossless WebP of 6320x6320 peaked at 682 MB and a progressive CMYK JPEG at 514 MB.
    from twinnet import predict

    monkeypatch.setattr(predict, "MAX_DECODE_BYTES", 32 * 1024 * 1024)
    side = 2200  # 4.84 MP: within the pixel cap, and cheap as a PNG or a baseline JPEG
    webp = tmp_path / "lossless.webp"
    big_digit("RGB", side).save(webp, lossless=True)
    cmyk = tmp_path / "cmyk.jpg"
    big_digit("CMYK", side).save(cmyk, progressive=True, quality=30)
    assert webp.stat().st_size < 20_000 and cmyk.stat().st_size < 200_000
    for path, what in ((webp, "WebP (RGB)"), (cmyk, "progressive JPEG (CMYK)")):
        expected = f"image too large to decode: {side}x{side} pixels of {what} take about"
        with pytest.raises(ImageError, match=re.escape(expected)):
            prepare_image(path)
    for name, options in (("same.png", {}), ("same.jpg", {"quality": 90}), ("same.tif", {})):
        big_digit("RGB", side).save(tmp_path / name, **options)
        assert prepare_image(tmp_path / name).shape == (28, 28, 1), name


def test_a_large_jpeg_is_decoded_at_a_reduced_scale(tmp_path, monkeypatch):
    from twinnet import predict

    path = tmp_path / "photo.jpg"
    big_digit("RGB", 4100).save(path, quality=90)  # 16.8 MP, four times WORK_PIXELS
    sizes = []
    real = predict.shrink
    monkeypatch.setattr(predict, "shrink",
                        lambda image: sizes.append((image.mode, image.size)) or real(image))
    prepared = prepare_image(path)
    assert sizes == [("L", (2050, 2050))]  # libjpeg's 1/2 scale, straight to grayscale
    whole = np.asarray(Image.open(path).convert("L").reduce(2), np.float64) / 255
    assert np.abs(prepared - predict.prepare_grayscale(whole, path)).max() < 0.1


def test_the_twin_is_built_after_the_images_are_decoded(tmp_path):
    # So that decoding's peak and TensorFlow's ~500 MB come one after the other.
    order = []

    class Model:
        eval_batch = 1000

        def logits(self, x):
            return np.zeros((len(x), 10))

    def build():
        order.append("model")
        return Model()

    path = save(draw_seven(), tmp_path / "seven.png")
    real = predict_images.__globals__["prepare_image"]
    predict_images.__globals__["prepare_image"] = lambda p: order.append("image") or real(p)
    try:
        results = predict_images(build, [path, path])
    finally:
        predict_images.__globals__["prepare_image"] = real
    assert order == ["image", "image", "model"] and results[0]["digit"] == 0
