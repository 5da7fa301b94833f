"""Contact sheets: one PNG grid of thumbnails with captions, for reviewing a batch at a glance.

Pure and deterministic: the same entries always give the same pixels (no timestamps, no
metadata), so a sheet can be compared byte for byte and regenerated at will.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

BACKGROUND = (255, 255, 255)
CELL_BACKGROUND = (236, 236, 236)
PLACEHOLDER = (214, 214, 214)
INK = (34, 34, 34)
MUTED = (110, 110, 110)
ERROR_INK = (170, 30, 30)
PAD = 8
CAPTION_LINES = 2
LINE_HEIGHT = 15
HEADER_HEIGHT = 32
MAX_DEFAULT_COLUMNS = 8

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@dataclass(frozen=True)
class SheetEntry:
    """One cell: an image (file path or encoded bytes, None for a failed job) and its caption.

    `caption` may hold two lines separated by a newline (e.g. custom_id, then the prompt);
    each is shortened to fit the cell. `error` is drawn on a placeholder when there is no image.
    """

    image: Path | str | bytes | None
    caption: str
    error: str | None = None


def make_contact_sheet(entries: list[SheetEntry], out_path: Path | str, *, columns: int | None = None,
                       thumb: int = 256, title: str = "Contact sheet") -> tuple[int, int]:
    """Draw `entries` as a captioned grid into a PNG at `out_path`; returns its (width, height)."""
    if thumb < 32:
        raise ValueError("thumb must be at least 32 pixels")
    cols = columns or min(MAX_DEFAULT_COLUMNS, max(1, math.ceil(math.sqrt(len(entries)))))
    if cols < 1:
        raise ValueError("columns must be positive")
    rows = max(1, math.ceil(len(entries) / cols))
    cell_w, cell_h = thumb + 2 * PAD, thumb + 2 * PAD + CAPTION_LINES * LINE_HEIGHT
    size = (max(cols * cell_w + PAD, 320), HEADER_HEIGHT + rows * cell_h + PAD)
    sheet = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = _font(12)
    drawn = 0
    for i, entry in enumerate(entries):
        x = PAD + (i % cols) * cell_w
        y = HEADER_HEIGHT + (i // cols) * cell_h
        drawn += _draw_cell(sheet, draw, entry, (x, y), thumb, font)
    header_font = _font(16)
    header = _fit(draw, _header(title, drawn, len(entries) - drawn), header_font, size[0] - 2 * PAD)
    draw.text((PAD, PAD), header, fill=INK, font=header_font)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_path, format="PNG", optimize=False)
    return size


def _header(title: str, images: int, failed: int) -> str:
    """The header line: title, image count and cells without an image."""
    text = f"{title}  -  {images} image{'s' if images != 1 else ''}"
    return text + (f", {failed} without image" if failed else "")


def _draw_cell(sheet: Image.Image, draw: ImageDraw.ImageDraw, entry: SheetEntry, origin: tuple[int, int],
               thumb: int, font: Font) -> bool:
    """One cell: the thumbnail (or a placeholder) and its caption below; True if it had an image."""
    x, y = origin
    box = (x, y, x + thumb - 1, y + thumb - 1)
    image = _load(entry.image)
    if image is None:
        fallback = "no image" if entry.image is None else "unreadable image"
        _draw_placeholder(draw, box, entry.error or fallback, font)
    else:
        draw.rectangle(box, fill=CELL_BACKGROUND)
        image.thumbnail((thumb, thumb), Image.Resampling.LANCZOS)
        # Centred in a square cell so portrait and landscape images line up in one grid.
        sheet.paste(image, (x + (thumb - image.width) // 2, y + (thumb - image.height) // 2))
    lines = (entry.caption.split("\n") + [""] * CAPTION_LINES)[:CAPTION_LINES]
    for n, line in enumerate(lines):
        colour = INK if n == 0 else MUTED
        draw.text((x, y + thumb + 3 + n * LINE_HEIGHT), _fit(draw, line, font, thumb), fill=colour, font=font)
    return image is not None


def _draw_placeholder(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], label: str, font: Font) -> None:
    """A grey cell with a cross and the error code, standing in for a job without an image."""
    x0, y0, x1, y1 = box
    draw.rectangle(box, fill=PLACEHOLDER, outline=MUTED)
    draw.line((x0, y0, x1, y1), fill=CELL_BACKGROUND, width=2)
    draw.line((x0, y1, x1, y0), fill=CELL_BACKGROUND, width=2)
    text = _fit(draw, label, font, x1 - x0 - 2 * PAD)
    width = draw.textlength(text, font=font)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    draw.rectangle((cx - width / 2 - 4, cy - 10, cx + width / 2 + 4, cy + 10), fill=BACKGROUND)
    draw.text((cx - width / 2, cy - 7), text, fill=ERROR_INK, font=font)


def _load(source: Path | str | bytes | None) -> Image.Image | None:
    """Decode an image as RGB, or None when it is missing or unreadable (drawn as a placeholder)."""
    if source is None:
        return None
    try:
        raw = source if isinstance(source, bytes) else Path(source).read_bytes()
        with Image.open(io.BytesIO(raw)) as img:
            return _flatten(img)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None


def _flatten(img: Image.Image) -> Image.Image:
    """RGB copy; transparency is composited on white so it reads like the sheet."""
    if img.mode in ("RGBA", "LA", "P"):
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, BACKGROUND)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return img.convert("RGB")


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Font, width: int) -> str:
    """`text` on one line, shortened with '...' to fit `width` pixels."""
    text = " ".join(text.split())
    if draw.textlength(text, font=font) <= width:
        return text
    low, high = 0, len(text)
    while low < high:  # binary search: the longest prefix that still fits with the ellipsis
        mid = (low + high + 1) // 2
        if draw.textlength(text[:mid].rstrip() + "...", font=font) <= width:
            low = mid
        else:
            high = mid - 1
    return text[:low].rstrip() + "..."


def _font(size: int) -> Font:
    """Pillow's bundled font at `size` (a bitmap fallback where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (OSError, ImportError):  # pragma: no cover - Pillow built without FreeType
        return ImageFont.load_default()
