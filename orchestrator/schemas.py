"""Request and response shapes of the public API (also the source of /v1/openapi.json)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator, model_validator

Scalar = str | int | float | bool | None


class Size(BaseModel):
    """Explicit image dimensions."""

    model_config = ConfigDict(extra="forbid")
    width: int
    height: int


class Lora(BaseModel):
    """A LoRA: fal path/URL or Runware AIR id, and its weight."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, max_length=2000)
    scale: float = 1.0


class CommonParams(BaseModel):
    """Generation parameters shared by every model; `native` passes provider fields through."""

    model_config = ConfigDict(extra="forbid")
    negative_prompt: str | None = None
    width: int | None = None
    height: int | None = None
    image_size: str | Size | None = Field(default=None, description="fal size preset or {width, height}")
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    num_images: int | None = None
    output_format: Literal["jpeg", "jpg", "png", "webp"] | None = None
    loras: list[Lora] | None = None
    native: dict[str, Any] | None = Field(default=None, description="provider-native fields, validated per model")


class Defaults(CommonParams):
    """Batch-wide defaults applied under each item's own values."""

    model: str | None = None


class Item(CommonParams):
    """One job of an explicit batch."""

    custom_id: str | None = Field(default=None, min_length=1, max_length=200)
    model: str | None = None
    prompt: str


class Matrix(CommonParams):
    """Ideation: every prompt x seed (or variant) x size x style."""

    model: str | None = None
    prompts: list[str] = Field(min_length=1)
    seeds: list[int] | None = None
    variants: int | None = Field(default=None, ge=1, le=1000)
    sizes: list[str | Size] | None = None
    styles: list[str] | None = None

    @model_validator(mode="after")
    def _seeds_or_variants(self) -> Matrix:
        if self.seeds is not None and self.variants is not None:
            raise ValueError("give seeds or variants, not both")
        return self


class Catalog(CommonParams):
    """Catalog generation: one job per row, prompt from a `{field}` template."""

    model: str | None = None
    template: str = Field(min_length=1)
    rows: list[dict[str, Scalar]] = Field(min_length=1)
    id_field: str | None = Field(default=None, description="row field used as custom_id")


class BatchRequest(BaseModel):
    """POST /v1/batches: exactly one of items, matrix or catalog."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="", max_length=200)
    lane: Literal["interactive", "bulk"] = "interactive"
    callback_url: HttpUrl | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    defaults: Defaults | None = None
    items: list[Item] | None = Field(default=None, min_length=1)
    matrix: Matrix | None = None
    catalog: Catalog | None = None

    @model_validator(mode="after")
    def _exactly_one_form(self) -> BatchRequest:
        given = [n for n in ("items", "matrix", "catalog") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of items, matrix or catalog")
        return self

    @field_validator("callback_url")
    @classmethod
    def _http_only(cls, v: HttpUrl | None) -> HttpUrl | None:
        if v is not None and v.scheme not in ("http", "https"):
            raise ValueError("must be an http(s) URL")
        return v


class BatchOut(BaseModel):
    """A batch as the API returns it."""

    id: str
    name: str
    lane: str
    state: str
    total: int
    counts: dict[str, int]
    cost: float
    callback_url: str | None
    metadata: dict[str, Any]
    created_at: str
    started_at: str | None
    completed_at: str | None


class JobOut(BaseModel):
    """A job as the API returns it."""

    id: str
    batch_id: str
    position: int
    custom_id: str
    model: str
    requested_model: str
    provider: str
    state: str
    attempt: int
    params: dict[str, Any]
    provider_request_id: str | None
    error_code: str | None
    error_message: str | None
    cost: float | None
    created_at: str
    completed_at: str | None


class Page(BaseModel):
    """A keyset-paginated list."""

    data: list[dict[str, Any]]
    next_cursor: str | None


class Problem(BaseModel):
    """RFC 9457 problem document."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = None


def openapi_document() -> dict[str, Any]:
    """A minimal OpenAPI 3.1 document built from the pydantic models."""
    from pydantic.json_schema import models_json_schema

    models: list[type[BaseModel]] = [BatchRequest, BatchOut, JobOut, Page, Problem]
    _, schema = models_json_schema([(m, "validation") for m in models],
                                   ref_template="#/components/schemas/{model}")
    components = schema.get("$defs", {})

    def ref(name: str) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{name}"}

    def resp(name: str, desc: str = "OK") -> dict[str, Any]:
        return {"description": desc, "content": {"application/json": {"schema": ref(name)}}}

    ok = {"200": {"description": "OK"}}
    problem = {"description": "Problem", "content": {"application/problem+json": {"schema": ref("Problem")}}}
    paths = {
        "/v1/batches": {
            "post": {"summary": "Submit a batch (JSON or JSONL body)",
                     "requestBody": {"content": {"application/json": {"schema": ref("BatchRequest")},
                                                 "application/x-ndjson": {"schema": {"type": "string"}}}},
                     "responses": {"201": resp("BatchOut", "Created"), "200": resp("BatchOut", "Replayed"),
                                   "409": problem, "413": problem, "422": problem}},
            "get": {"summary": "List batches", "responses": {"200": resp("Page")}},
        },
        "/v1/batches/{id}": {"get": {"summary": "One batch", "responses": {"200": resp("BatchOut"),
                                                                         "404": problem}}},
        "/v1/batches/{id}/jobs": {"get": {"summary": "Jobs of a batch", "responses": {"200": resp("Page")}}},
        "/v1/batches/{id}/cancel": {"post": {"summary": "Cancel a batch", "responses": {"200": resp("BatchOut")}}},
        "/v1/jobs/{id}": {"get": {"summary": "One job", "responses": {"200": resp("JobOut"), "404": problem}}},
        "/v1/batches/{id}/results": {"get": {"summary": "JSONL manifest with presigned links", "responses": {
            "200": {"description": "one JSON object per line", "content": {"application/x-ndjson": {}}}}}},
        "/v1/batches/{id}/retry": {"post": {"summary": "Re-queue failed jobs", "responses": {"200": resp("BatchOut")}}},
        "/v1/schedules": {"post": {"summary": "Create a schedule", "responses": {"201": {"description": "Created"},
                                                                                "422": problem}},
                          "get": {"summary": "List schedules", "responses": {"200": resp("Page")}}},
        "/v1/schedules/{id}": {"get": {"summary": "One schedule", "responses": ok},
                               "patch": {"summary": "Change a schedule", "responses": ok},
                               "delete": {"summary": "Delete a schedule",
                                          "responses": {"204": {"description": "Deleted"}}}},
        "/v1/schedules/{id}/run": {"post": {"summary": "Run now", "responses": {"201": resp("BatchOut")}}},
        "/v1/callback-secret": {"get": {"summary": "Standard Webhooks secret", "responses": ok}},
        "/v1/models": {"get": {"summary": "The model catalog", "responses": ok}},
        "/v1/openapi.json": {"get": {"summary": "This document", "responses": ok}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Image generation batch orchestrator", "version": "1"},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }
