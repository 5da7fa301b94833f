"""Contact sheets: grid geometry, aspect-preserving thumbnails, placeholders, determinism."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from orchestrator.contact_sheet import BACKGROUND, CELL_BACKGROUND, PLACEHOLDER, SheetEntry, make_contact_sheet

RED, GREEN = (220, 20, 20), (20, 200, 20)


def png(width: int, height: int, colour: tuple[int, ...], mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height), colour).save(buf, format="PNG")
    return buf.getvalue()


def close(a: object, b: tuple[int, ...], tol: int = 12) -> bool:
    assert isinstance(a, tuple)
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=False))


def test_grid_size_and_aspect_preserved(tmp_path: Path) -> None:
    wide = tmp_path / "wide.png"
    wide.write_bytes(png(400, 200, GREEN))
    entries = [SheetEntry(png(300, 300, RED), "p0-s0\na red square"), SheetEntry(wide, "p0-s1\na wide green"),
               SheetEntry(png(100, 100, RED), "p1-s0\nsmall")]
    size = make_contact_sheet(entries, tmp_path / "sheet.png", columns=2, thumb=100)
    cell_w, cell_h = 100 + 16, 100 + 16 + 30
    assert size == (max(2 * cell_w + 8, 320), 32 + 2 * cell_h + 8)
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.size == size
        rgb = sheet.convert("RGB")
        assert close(rgb.getpixel((8 + 50, 32 + 50)), RED)  # square fills its cell
        x0 = 8 + cell_w
        assert close(rgb.getpixel((x0 + 50, 32 + 50)), GREEN)  # wide image in the middle...
        assert rgb.getpixel((x0 + 50, 32 + 5)) == CELL_BACKGROUND  # ...letterboxed above and below
        assert rgb.getpixel((size[0] - 3, size[1] - 3)) == BACKGROUND


def test_failed_jobs_and_bad_images_are_placeholders(tmp_path: Path) -> None:
    entries = [SheetEntry(None, "bad\nforbidden prompt", error="content_policy_violation"),
               SheetEntry(b"not an image", "broken\nx"), SheetEntry(tmp_path / "missing.png", "gone\ny")]
    make_contact_sheet(entries, tmp_path / "sheet.png", columns=3, thumb=64)
    with Image.open(tmp_path / "sheet.png") as sheet:
        rgb = sheet.convert("RGB")
        for col in range(3):
            x = 8 + col * (64 + 16)
            assert rgb.getpixel((x + 20, 32 + 4)) == PLACEHOLDER


def test_deterministic_and_transparency_flattened(tmp_path: Path) -> None:
    entries = [SheetEntry(png(64, 64, (0, 0, 0, 0), mode="RGBA"), "clear\n" + "a very long prompt " * 20),
               SheetEntry(png(64, 128, GREEN), "tall\nportrait")]
    a = make_contact_sheet(entries, tmp_path / "a.png", title="t")
    b = make_contact_sheet(entries, tmp_path / "b.png", title="t")
    assert a == b and (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    with Image.open(tmp_path / "a.png") as sheet:
        assert sheet.convert("RGB").getpixel((8 + 128, 32 + 128)) == BACKGROUND  # transparent -> white


def test_default_columns_and_empty(tmp_path: Path) -> None:
    entries = [SheetEntry(png(32, 32, RED), f"c{i}") for i in range(10)]
    width, height = make_contact_sheet(entries, tmp_path / "ten.png", thumb=32)
    assert (width, height) == (max(4 * 48 + 8, 320), 32 + 3 * (48 + 30) + 8)  # ceil(sqrt(10)) = 4 columns
    assert make_contact_sheet([], tmp_path / "empty.png", thumb=32)[1] == 32 + 78 + 8
    with pytest.raises(ValueError):
        make_contact_sheet(entries, tmp_path / "x.png", thumb=8)


def test_cells_are_labelled_with_provider_and_model(tmp_path: Path) -> None:
    from orchestrator.cli.downloads import sheet_entries

    manifest = [{"custom_id": "p0-s1", "prompt": "a fox", "provider": "fal", "model": "fal-ai/flux/schnell",
                 "images": [{"file": "0-p0-s1-0.jpg"}]},
                {"custom_id": "p1-s1", "prompt": "an owl", "provider": "runware", "model": "runware:100@1",
                 "status": "failed", "images": [], "error": {"code": "content_policy"}}]
    captions = [e.caption.split("\n") for e in sheet_entries(manifest, tmp_path)]
    assert captions == [["fal fal-ai/flux/schnell", "p0-s1: a fox"], ["runware runware:100@1", "p1-s1: an owl"]]
