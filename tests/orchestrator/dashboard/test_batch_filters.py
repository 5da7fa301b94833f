"""The batch list filters shared by /v1/batches and the dashboard (one domain function)."""

from __future__ import annotations

import re

from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from tests.conftest import make_key


def _submit(client: FlaskClient, headers: dict[str, str], name: str, model: str, prompt: str,
            lane: str = "interactive") -> str:
    resp = client.post("/v1/batches", headers=headers, json={"name": name, "lane": lane, "items": [
        {"model": model, "prompt": prompt}]})
    assert resp.status_code == 201, resp.text
    return str(resp.json["id"])


def test_filters_and_search_in_the_api_and_the_dashboard(client: FlaskClient, headers: dict[str, str],
                                                         sessions: sessionmaker[Session]) -> None:
    fox = _submit(client, headers, "animals", "fal-ai/flux/schnell", "a red fox in the snow")
    owl = _submit(client, headers, "birds", "runware:100@1", "an owl at night", lane="bulk")
    mug = _submit(client, headers, "mugs for the catalog", "flux-dev", "a blue mug")

    def ids(query: str) -> set[str]:
        resp = client.get(f"/v1/batches?{query}", headers=headers)
        assert resp.status_code == 200, resp.text
        return {b["id"] for b in resp.json["data"]}

    assert ids("") == {fox, owl, mug}
    assert ids("q=fox") == {fox}  # prompt text
    assert ids("q=catalog") == {mug}  # batch name
    assert ids("q=FOX+IN") == {fox}  # case-insensitive
    assert ids("q=100%25") == set()  # % is literal, not a wildcard
    assert ids("provider=runware") == {owl}
    assert ids("model=flux-schnell") == {fox, owl}  # an alias means every model of its family
    assert ids("model=fal-ai/flux/dev") == {mug}
    assert ids("lane=bulk") == {owl}
    assert ids("provider=fal&q=mug") == {mug}
    bad = client.get("/v1/batches?provider=openai", headers=headers)
    assert bad.status_code == 400 and "provider" in bad.text

    # The dashboard sees every tenant; its filters are in the URL.
    other = {"Authorization": f"Bearer {make_key(sessions, 'other')}"}
    _submit(client, other, "theirs", "fal-ai/flux/schnell", "a red fox again")
    page = client.get("/admin/signin")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    client.post("/admin/signin", data={"api_key": make_key(sessions, "ops", "admin"), "csrf_token": token})
    rows = client.get("/admin/batches?q=fox").text
    assert rows.count('<tr data-batch="') == 2 and "theirs" in rows
    rows = client.get("/admin/batches?q=fox&tenant=acme").text
    assert rows.count('<tr data-batch="') == 1
    sorted_rows = client.get("/admin/batches?sort=name").text
    names = re.findall(r'<td class="name"><a [^>]+>([^<]+)</a>', sorted_rows)
    assert names == sorted(names)
