"""Prediction on users' own digit images, prepared the way MNIST itself was made.

MNIST digits are white on black, size-normalised so the longer side of the
digit's bounding box is 20 px (aspect ratio kept, anti-aliased), then pasted
into a 28x28 field so that the centre of mass of the pixel intensities sits at
the centre (LeCun et al.). Measured on the training set, that centre is (14, 14)
in row/column index coordinates. ``prepare_image`` repeats those steps on any
image Pillow can open, in either polarity, so a photo or scan of a dark digit on
light paper becomes an input the models have seen the like of.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from twinnet.errors import TwinnetError
from twinnet.metrics import predict_logits
from twinnet.numpy_nn.losses import log_softmax
from twinnet.util import FileAccessError, open_regular_file

if TYPE_CHECKING:
    from twinnet.backend import Backend

FIELD = 28  # side of an MNIST image
BOX = 20  # longer side of the digit's bounding box in MNIST
CENTRE = 14.0  # where MNIST puts the centre of mass (row and column index)
# Ink below this fraction of the strongest ink is paper texture, shadow or JPEG noise.
INK_THRESHOLD = 0.3
# Strongest ink, as a fraction of full scale, below which an image counts as blank.
MIN_CONTRAST = 0.1
TOP = 3
# Images above this many pixels are refused from their header, before decoding. 40 MP
# covers most cameras.
MAX_PIXELS = 40_000_000
# And so are images whose decoding would take more memory than this (``decode_bytes``),
# which depends on the format as much as on the pixel count: a lossless WebP takes about
# 16 bytes a pixel, a progressive CMYK JPEG 12, a PNG 5. With the float arrays of the
# preparation (WORK_PIXELS) and the interpreter, a prediction stays within 500 MB.
MAX_DECODE_BYTES = 320 * 1024 * 1024
# Larger images are box-averaged below this before the float arrays (24 bytes a pixel).
WORK_PIXELS = 4_000_000


class ImageError(TwinnetError):
    """An image file that cannot be read, or holds no digit."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def read_grayscale(path: str | os.PathLike) -> np.ndarray:
    """The image at ``path`` as float64 (H, W) in [0, 1], 0 = black; transparency over white.

    Any mode Pillow opens is accepted: 1-bit, palette, RGB(A), CMYK, 16- and 32-bit
    integer, float. EXIF orientation is applied, so phone photos stand upright. Images
    of more than MAX_PIXELS pixels are refused from their header, before decoding; those
    above WORK_PIXELS are box-averaged down by a whole factor first (see ``shrink``).
    """
    try:
        fh = open_regular_file(path)
    except FileAccessError as exc:
        raise ImageError(path, exc.reason) from None
    try:
        with fh, warnings.catch_warnings():
            # Pillow's own bomb check warns on stderr; ours refuses first, in one line.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fh) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ImageError(path, f"image too large: {width}x{height} pixels, "
                                           f"more than {MAX_PIXELS}")
                draft_jpeg(image)
                needed = decode_bytes(image)
                if needed > MAX_DECODE_BYTES:
                    raise ImageError(path, f"image too large to decode: {width}x{height} pixels of "
                                           f"{describe(image)} take about {needed / 2**20:.0f} MB, "
                                           f"more than the {MAX_DECODE_BYTES / 2**20:.0f} MB allowed")
                image.load()
                image = ImageOps.exif_transpose(shrink(image))
                return to_grayscale(image)
    except UnidentifiedImageError:
        raise ImageError(path, "cannot identify image file (not an image Pillow can read)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own check, at a higher count than ours, fired while reading the header.
        raise ImageError(path, f"image too large: more than {MAX_PIXELS} pixels") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # Pillow reports damaged or truncated data through any of these.
        raise ImageError(path, f"cannot read image ({exc})") from None


# Bytes a pixel takes in Pillow's image, by mode (RGB is stored as 4 bytes, like RGBA).
STORAGE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 4, "La": 4, "PA": 4, "I;16": 2, "I;16B": 2,
                 "I;16L": 2, "I;16N": 2}


def storage_bytes(mode: str) -> int:
    return STORAGE_BYTES.get(mode, 4)


def is_progressive_jpeg(image: Image.Image) -> bool:
    return image.format in ("JPEG", "MPO") and bool(image.info.get("progressive")
                                                    or image.info.get("progression"))


def draft_jpeg(image: Image.Image) -> None:
    """Let libjpeg decode a JPEG larger than WORK_PIXELS at a reduced scale (1/2, 1/4 or
    1/8: DCT scaling, a proper downsampling), and a colour one straight to grayscale,
    rather than decoding it whole and averaging it down after. Other formats: nothing."""
    width, height = image.size
    if image.format not in ("JPEG", "MPO"):
        return
    mode = "L" if image.mode in ("L", "RGB") else image.mode
    factor = max(1.0, math.sqrt(width * height / WORK_PIXELS))
    image.draft(mode, (math.ceil(width / factor), math.ceil(height / factor)))


def decode_bytes(image: Image.Image) -> int:
    """Memory (bytes) that decoding the opened ``image`` takes at its peak, from its
    header: the decoded image, plus what the format's decoder holds besides.

    - WebP: libwebp decodes into a buffer of its own (RGBA) that Pillow then copies,
      with their overheads about 16 bytes a pixel (measured).
    - progressive JPEG: libjpeg keeps every DCT coefficient of the whole image
      (2 bytes a pixel per colour channel, whatever scale ``draft_jpeg`` chose), then
      the (reduced) output.
    - everything else (PNG, baseline JPEG, GIF, BMP, TIFF, ...): the image itself and a
      row buffer, about one byte a pixel more.

    ``image.size`` is the size after ``draft_jpeg``; the coefficients are counted at
    the full size the header declares."""
    width, height = image.size
    pixels = width * height
    stored = storage_bytes(image.mode)
    if image.format == "WEBP":
        return 16 * pixels
    if is_progressive_jpeg(image):
        scale = image.decoderconfig[0] if image.decoderconfig else 1  # set by draft()
        channels = max(1, getattr(image, "layers", 4))  # the file's colour channels
        return 2 * channels * pixels * scale * scale + stored * pixels
    return (stored + 1) * pixels


def describe(image: Image.Image) -> str:
    """``progressive JPEG (CMYK)``, ``WebP (RGBA)``: the format and mode, for messages."""
    name = {"WEBP": "WebP"}.get(image.format or "", image.format or "image")
    return f"{'progressive ' if is_progressive_jpeg(image) else ''}{name} ({image.mode})"


def shrink(image: Image.Image) -> Image.Image:
    """``image`` box-averaged by the smallest whole factor that brings it to at most
    WORK_PIXELS pixels, or unchanged if it is that small already.

    The digit ends up 20 px high whatever the input size, and the later resize averages
    boxes when shrinking too, so this changes little but bounds the float arrays made
    from the image. Palette and 1-bit images are expanded first (averaging palette
    indices means nothing) and 16-bit ones pass through 32-bit integers.
    """
    width, height = image.size
    if width * height <= WORK_PIXELS:
        return image
    factor = math.ceil(math.sqrt(width * height / WORK_PIXELS))
    if image.mode == "1":
        return image.convert("L").reduce(factor)
    if image.mode in ("P", "PA"):
        return image.convert("RGBA").reduce(factor)
    if image.mode.startswith("I;16"):
        return image.convert("I").reduce(factor).convert("I;16")
    return image.reduce(factor)


def to_grayscale(image: Image.Image) -> np.ndarray:
    """A Pillow image as float64 (H, W) in [0, 1]; transparent areas composited on white."""
    if image.mode.startswith("I;16"):
        return np.asarray(image, dtype=np.float64) / 65535.0
    if image.mode in ("I", "F"):
        # 32-bit integer or float pixels carry no full scale: take 8 or 16 bits if they fit.
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError("NaN or infinite pixel values")
        top = values.max(initial=0.0)
        full_scale = 1.0 if top <= 1.0 else 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
        return np.clip(values / full_scale, 0.0, 1.0)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("L"), dtype=np.float64) / 255.0


def ink_map(gray: np.ndarray) -> np.ndarray:
    """Ink intensity (H, W) in [0, 1], 1 = strongest ink, 0 = background.

    The background level is the median of the border pixels; the ink is whichever
    extreme lies farther from it, so a dark digit on light paper is inverted and a
    light digit on dark ground is not. Returns all zeros for a blank image.
    """
    border = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    background = float(np.median(border))
    dark_ink = background - gray.min() > gray.max() - background
    ink = background - gray if dark_ink else gray - background
    ink = np.clip(ink, 0.0, None)
    strongest = ink.max(initial=0.0)
    if strongest < MIN_CONTRAST:
        return np.zeros_like(gray)
    ink /= strongest
    # Zero the faint rest so stains and uneven lighting neither widen the box nor pull the centre.
    ink[ink < INK_THRESHOLD] = 0.0
    return ink


def crop_to_ink(ink: np.ndarray) -> np.ndarray:
    """The smallest (h, w) window of ``ink`` (H, W) holding every non-zero pixel."""
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def fit_box(digit: np.ndarray) -> np.ndarray:
    """Resize (h, w) so its longer side is BOX px, keeping the aspect ratio; float32 in [0, 1]."""
    h, w = digit.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # Pillow wants (width, height)
    # BOX averaging when shrinking is the anti-aliasing MNIST describes; LANCZOS when growing.
    resample = Image.Resampling.BOX if scale <= 1 else Image.Resampling.LANCZOS
    resized = Image.fromarray(digit.astype(np.float32)).resize(size, resample)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def paste_centred(digit: np.ndarray) -> np.ndarray:
    """Paste (h, w) with h, w <= FIELD into a FIELD x FIELD zero field so that its centre
    of mass lands on (CENTRE, CENTRE), shifted by whole pixels (MNIST did not resample
    when centring); parts pushed past the edge are cut off."""
    h, w = digit.shape
    mass = digit.sum(dtype=np.float64)
    com_row = (digit.sum(axis=1) @ np.arange(h)) / mass
    com_col = (digit.sum(axis=0) @ np.arange(w)) / mass
    top, left = round(CENTRE - com_row), round(CENTRE - com_col)
    field = np.zeros((FIELD, FIELD), dtype=np.float32)
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + h, FIELD), min(left + w, FIELD)
    field[r0:r1, c0:c1] = digit[r0 - top : r1 - top, c0 - left : c1 - left]
    return field


def prepare_image(path: str | os.PathLike) -> np.ndarray:
    """Read the digit image at ``path`` and make it look like MNIST.

    Returns float32 (28, 28, 1) in [0, 1], white digit on black, the digit's longer
    side 20 px and its centre of mass at the centre. Raises ImageError, naming the
    file, if it is missing, unreadable, not an image, empty or blank.
    """
    return prepare_grayscale(read_grayscale(path), path)


def prepare_grayscale(gray: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """``prepare_image`` on an image already read (float64 (H, W) in [0, 1], as ``to_grayscale``
    returns it) -> float32 (28, 28, 1); ``path`` only names the image in an ImageError."""
    if gray.size == 0:
        raise ImageError(path, "empty image (zero size)")
    ink = ink_map(gray)
    if not ink.any():
        raise ImageError(path, "blank image: no digit found")
    digit = fit_box(crop_to_ink(ink))
    if not digit.any():
        raise ImageError(path, "blank image: no digit found")
    return paste_centred(digit)[..., np.newaxis]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits (N, 10), in float64."""
    return np.exp(log_softmax(logits.astype(np.float64)))


def predict_images(model: Backend | Callable[[], Backend], paths: list[str]) -> list[dict[str, Any]]:
    """Predict the digit in each image file, in the order given.

    Each result is ``{"file", "digit", "top3": [[digit, probability], ...]}`` or, for a
    file that cannot be used, ``{"file", "error"}``; a bad file does not stop the others.
    ``model`` may be a function that builds it: it is then called after every image is
    decoded, so that the memory peaks of decoding and of loading a twin (TensorFlow's
    runtime is about 500 MB) come one after the other instead of adding up.
    """
    results: list[dict[str, Any]] = []
    images, good = [], []
    for path in paths:
        try:
            images.append(prepare_image(path))
        except ImageError as exc:
            results.append({"file": str(path), "error": exc.reason})
            continue
        good.append(len(results))
        results.append({"file": str(path)})
    if images:
        twin = model() if callable(model) and not hasattr(model, "logits") else model
        probabilities = softmax(predict_logits(twin, np.stack(images)))
        for index, p in zip(good, probabilities, strict=True):
            ranked = np.argsort(-p, kind="stable")[:TOP]
            results[index]["digit"] = int(ranked[0])
            results[index]["top3"] = [[int(d), float(p[d])] for d in ranked]
    return results


def format_predictions(results: list[dict[str, Any]]) -> str:
    """One line per file: ``digit.png: 7  (7 99.1%, 1 0.5%, 9 0.2%)`` or ``bad.txt: error: ...``."""
    lines = []
    for result in results:
        if "error" in result:
            lines.append(f"{result['file']}: error: {result['error']}")
        else:
            top = ", ".join(f"{d} {p:.1%}" for d, p in result["top3"])
            lines.append(f"{result['file']}: {result['digit']}  ({top})")
    return "\n".join(lines)
