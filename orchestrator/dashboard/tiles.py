"""The mood board's tiles, rendered in Python.

A 1,000-image page through a Jinja loop spends most of its time auto-escaping ~15 values per
tile (~0.4 s); the same markup from one f-string with html.escape takes a few milliseconds.
Every value is escaped here exactly as Jinja would.
"""

from __future__ import annotations

from html import escape

from flask import request
from markupsafe import Markup

from orchestrator.dashboard.blueprint import bp
from orchestrator.gallery import Tile


def _tile(t: Tile, base: str) -> str:
    # Lean markup (a 1,000-image page is ~0.6 MB): the lightbox reads its caption from the figcaption.
    aid, cid = str(t.asset_id), escape(t.custom_id)
    dims = f' width="{t.width}" height="{t.height}"' if t.width and t.height else ""
    label = f"{cid} #{t.index}" if t.index else cid
    stored = t.stored_at.isoformat() if t.stored_at else ""
    return (
        f'<figure class="tile{" picked" if t.picked else ""}" data-asset="{aid}" data-stored="{stored}">'
        f'<label class="pick-box"><input type="checkbox" name="asset" value="{aid}" aria-label="Select {cid}"></label>'
        f'<a href="{base}/images/{aid}" class="open">'
        f'<img src="{base}/images/{aid}" loading="lazy" alt="{cid}"{dims}></a>'
        + ('<span class="star" title="picked">★</span>' if t.picked else "")
        + f'<figcaption><a href="{base}/jobs/{t.job_id}" class="cid">{label}</a><span class="details">'
        f'<span class="p">{escape(t.prompt)}</span><br>seed {escape(t.seed or "–")} · {t.width}×{t.height} · '
        f'{escape(t.provider)} · {escape(t.model)}</span></figcaption></figure>\n'
    )


@bp.app_template_global("tiles_html")
def tiles_html(tiles: list[Tile]) -> Markup:
    """All tiles as one safe string."""
    base = escape(request.script_root + "/admin")
    return Markup("".join(_tile(t, base) for t in tiles))  # noqa: S704  (every value escaped above)
