"""Deterministic placeholder images, and the expiring CDN-like store that serves them."""

from __future__ import annotations

import hashlib
import io
import textwrap
import time
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from orchestrator.sandbox.common.ids import new_uuid

# Pillow format name, MIME type and file extension per normalised format.
FORMATS = {
    "jpeg": ("JPEG", "image/jpeg", "jpeg"),
    "jpg": ("JPEG", "image/jpeg", "jpg"),
    "png": ("PNG", "image/png", "png"),
    "webp": ("WEBP", "image/webp", "webp"),
}
# Drawing happens on a canvas this many times smaller than the output, then one resize scales it up:
# a 1024x768 image costs a few milliseconds (mostly JPEG encoding) instead of tens.
_DOWNSCALE = 4
_MIN_CANVAS = 96


@dataclass(frozen=True)
class ImageSpec:
    """Everything that determines the bytes of one generated image."""

    prompt: str
    seed: int
    width: int
    height: int
    fmt: str  # a key of FORMATS
    blank: bool = False  # NSFW-filtered output: an all-black image

    @property
    def content_type(self) -> str:
        """MIME type of the encoded image."""
        return FORMATS[self.fmt][1]

    @property
    def extension(self) -> str:
        """File extension without the dot."""
        return FORMATS[self.fmt][2]


def render(spec: ImageSpec) -> bytes:
    """Return the encoded image for `spec` (cached; identical specs give identical bytes)."""
    return _render_cached(spec)


@lru_cache(maxsize=512)
def _render_cached(spec: ImageSpec) -> bytes:
    image = _black(spec) if spec.blank else _picture(spec)
    buf = io.BytesIO()
    pil_format = FORMATS[spec.fmt][0]
    if pil_format == "JPEG":
        image.save(buf, "JPEG", quality=85)
    elif pil_format == "PNG":
        image.save(buf, "PNG", compress_level=1)
    else:
        image.save(buf, "WEBP", quality=80, method=0)
    return buf.getvalue()


def _black(spec: ImageSpec) -> Image.Image:
    return Image.new("RGB", (spec.width, spec.height))


def _picture(spec: ImageSpec) -> Image.Image:
    # The palette comes from the prompt alone, so one prompt keeps its colours across seeds; the
    # seed picks how the palette is laid out (one of eight turns/mirrors) and draws a few shapes
    # of its own, so a mood board of four seeds shows four visibly different pictures.
    prompt_digest = hashlib.sha256(spec.prompt.encode()).digest()
    seed_digest = hashlib.sha256(str(spec.seed).encode()).digest()
    corners = Image.new("RGB", (3, 3))
    colours = [tuple(prompt_digest[i : i + 3]) for i in range(0, 27, 3)]
    colours[4] = tuple(seed_digest[:3])
    corners.putdata(colours)
    corners = _turn(corners, seed_digest[3] % 8)
    canvas_size = (
        max(_MIN_CANVAS, spec.width // _DOWNSCALE),
        max(_MIN_CANVAS, spec.height // _DOWNSCALE),
    )
    canvas = corners.resize(canvas_size, Image.Resampling.BILINEAR)
    _draw_shapes(canvas, seed_digest[4:], colours)
    _draw_words(canvas, spec)
    # NEAREST keeps the upscale to a fraction of a millisecond; the 4-pixel steps barely show on a gradient.
    return canvas.resize((spec.width, spec.height), Image.Resampling.NEAREST)


_TURNS = (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270,
          Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.TRANSPOSE,
          Image.Transpose.TRANSVERSE)


def _turn(image: Image.Image, which: int) -> Image.Image:
    turn = _TURNS[which]
    return image if turn is None else image.transpose(turn)


def _draw_shapes(canvas: Image.Image, digest: bytes, palette: list[tuple[int, ...]]) -> None:
    """Three seed-placed discs and bars in the prompt's colours (inverted, so they stand out)."""
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    for n in range(3):
        b = digest[n * 6 : n * 6 + 6]
        cx, cy = b[0] * width // 255, b[1] * height // 255
        r = max(4, (b[2] % 40 + 15) * min(width, height) // 100)
        fill = tuple(255 - c for c in palette[b[3] % len(palette)])
        if b[4] % 2:
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.rectangle((cx - r, cy - r // 3, cx + r, cy + r // 3), fill=fill)


def _draw_words(canvas: Image.Image, spec: ImageSpec) -> None:
    width, height = canvas.size
    font_size = max(8, min(width, height) // 9)
    font = _font(font_size)
    chars_per_line = max(6, int(width / (font_size * 0.6)))
    lines = textwrap.wrap(spec.prompt, chars_per_line)[: max(1, height // (font_size + 2) - 1)]
    lines.append(f"seed {spec.seed}")
    draw = ImageDraw.Draw(canvas)
    draw.multiline_text(
        (font_size // 2, font_size // 2),
        "\n".join(lines),
        font=font,
        fill=(255, 255, 255),
        stroke_width=1,
        stroke_fill=(0, 0, 0),
    )


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


@dataclass
class StoredFile:
    """One served image: enough to re-render it, plus when it stops being served."""

    spec: ImageSpec
    size: int
    expires_at: float


class MediaStore:
    """Maps file ids to image specs; bytes are re-rendered from the cache on demand, bounding memory."""

    def __init__(self) -> None:
        self._files: dict[str, StoredFile] = {}
        self._adds = 0

    def add(self, spec: ImageSpec, size: int, ttl: float, file_id: str | None = None) -> str:
        """Register a rendered image and return its file name (`<uuid>.<ext>`)."""
        name = f"{file_id or new_uuid()}.{spec.extension}"
        self._files[name] = StoredFile(spec, size, time.monotonic() + ttl)
        self._adds += 1
        if self._adds % 4096 == 0:
            self._purge()
        return name

    def _purge(self) -> None:
        # Unread files would otherwise pile up in a long-running sandbox.
        now = time.monotonic()
        for name in [n for n, f in self._files.items() if f.expires_at <= now]:
            del self._files[name]

    def get(self, name: str) -> StoredFile | None:
        """Return the live file called `name`, or None if unknown or expired."""
        stored = self._files.get(name)
        if stored is None:
            return None
        if time.monotonic() >= stored.expires_at:
            del self._files[name]
            return None
        return stored

    def clear(self) -> None:
        """Forget every file."""
        self._files.clear()
