"""The mood board's read side: a batch's stored images with their job's details and pick flags,
plus the exports (a zip of the picked files with a manifest, and a contact sheet)."""

from __future__ import annotations

import io
import json
import tempfile
import uuid
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator.contact_sheet import SheetEntry, make_contact_sheet
from orchestrator.models import Asset, Batch, Job, Pick
from orchestrator.storage.base import Storage, StorageError

EXPORT_MAX_IMAGES = 2000
EXPORT_MAX_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class Tile:
    """One stored image of a batch, as the grid shows it."""

    asset_id: uuid.UUID
    job_id: uuid.UUID
    position: int
    index: int
    custom_id: str
    prompt: str
    seed: str | None
    width: int | None
    height: int | None
    provider: str
    model: str
    storage_key: str
    content_type: str | None
    sha256: str | None
    bytes: int | None
    stored_at: datetime | None
    picked: bool

    def manifest(self) -> dict[str, Any]:
        """The manifest line of an exported image."""
        return {"asset_id": str(self.asset_id), "job_id": str(self.job_id), "custom_id": self.custom_id,
                "index": self.index, "prompt": self.prompt, "seed": self.seed, "width": self.width,
                "height": self.height, "provider": self.provider, "model": self.model, "sha256": self.sha256,
                "bytes": self.bytes, "content_type": self.content_type, "storage_key": self.storage_key}


def tiles(session: Session, batch: Batch, *, picks_only: bool = False, after: int = -1, limit: int = 1000,
          since: datetime | None = None) -> list[Tile]:
    """Stored images of a batch in grid order (position, index), keyset-paged on position."""
    picked = sa.exists().where(Pick.asset_id == Asset.id, Pick.tenant == batch.tenant)
    q = (sa.select(Asset.id, Asset.job_id, Job.position, Asset.index, Job.custom_id, Job.params["prompt"].as_string(),
                   Asset.seed, Asset.width, Asset.height, Job.provider, Job.model, Asset.storage_key,
                   Asset.content_type, Asset.sha256, Asset.bytes, Asset.stored_at, picked.label("picked"))
         .join(Job, Job.id == Asset.job_id)
         .where(Job.batch_id == batch.id, Asset.stored_at.is_not(None), Job.position > after))
    if picks_only:
        q = q.where(picked)
    if since is not None:
        q = q.where(Asset.stored_at > since)
    rows = session.execute(q.order_by(Job.position, Asset.index).limit(limit)).all()
    return [Tile(r[0], r[1], r[2], r[3], r[4], r[5] or "", r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13],
                 r[14], r[15], bool(r[16])) for r in rows]


def picks_zip(session: Session, storage: Storage, batch: Batch) -> bytes:
    """A zip of the picked images, `manifest.jsonl` and `contact-sheet.png`."""
    chosen = tiles(session, batch, picks_only=True, limit=EXPORT_MAX_IMAGES)
    buf = io.BytesIO()
    total = 0
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf, tempfile.TemporaryDirectory() as tmp:
        entries, lines = [], []
        for tile in chosen:
            data = _read(storage, tile.storage_key)
            total += len(data)
            if total > EXPORT_MAX_BYTES:
                raise StorageError(f"the picks exceed {EXPORT_MAX_BYTES // (1024 * 1024)} MB; export fewer")
            ext = tile.storage_key.rsplit(".", 1)[-1]
            name = f"images/{tile.position:05d}-{_safe(tile.custom_id)}-{tile.index}.{ext}"
            zf.writestr(name, data)
            lines.append(json.dumps({**tile.manifest(), "file": name}))
            entries.append(SheetEntry(data, f"{tile.custom_id}\n{tile.prompt}"))
        zf.writestr("manifest.jsonl", "\n".join(lines) + ("\n" if lines else ""))
        sheet = Path(tmp) / "sheet.png"
        make_contact_sheet(entries, sheet, title=f"{batch.name or batch.id}: {len(entries)} picks")
        zf.writestr("contact-sheet.png", sheet.read_bytes())
    return buf.getvalue()


def contact_sheet(session: Session, storage: Storage, batch: Batch, *, picks_only: bool, limit: int = 200) -> bytes:
    """A PNG contact sheet of the batch's images (or its picks)."""
    chosen = tiles(session, batch, picks_only=picks_only, limit=limit)
    entries = [SheetEntry(_read(storage, t.storage_key), f"{t.custom_id}\n{t.prompt}") for t in chosen]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sheet.png"
        make_contact_sheet(entries, out, title=f"{batch.name or batch.id}: {len(entries)} images")
        return out.read_bytes()


def _read(storage: Storage, key: str) -> bytes:
    data = storage.read(key, EXPORT_MAX_BYTES)
    if data is None:
        raise StorageError(f"the stored image {key} is missing from storage")
    return data


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:60] or "_"
