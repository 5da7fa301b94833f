"""Runware `imageInference` tasks: validation into Runware's error shape, and result items."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from orchestrator.sandbox.runware.config import RunwareConfig

DOCS = "https://runware.ai/docs/en/image-inference/api-reference"
OUTPUT_TYPES = ("URL", "base64Data", "dataURI")
OUTPUT_FORMATS = {"jpg": "jpg", "png": "png", "webp": "webp"}
# Price per megapixel image, USD, so `includeCost` returns plausible numbers.
PRICES = {"runware:100@1": 0.0013, "runware:101@1": 0.0038, "rundiffusion:130@100": 0.0040}


@dataclass
class TaskError:
    """One `errors[]` item and the HTTP status it implies when nothing else succeeds."""

    body: dict[str, Any]
    http: int = 400


def task_error(
    code: str, message: str, task: dict[str, Any] | None, parameter: str | None = None, http: int = 400, **extra: Any
) -> TaskError:
    """Build an error item in Runware's documented shape."""
    task = task or {}
    anchor = f"#request-{parameter.lower()}" if parameter else ""
    body = {
        "code": code,
        "message": message,
        "parameter": parameter,
        "taskType": task.get("taskType"),
        "taskUUID": task.get("taskUUID"),
        "documentation": DOCS + anchor,
        **extra,
    }
    return TaskError(body, http)


@dataclass
class ImageTask:
    """A validated imageInference task with defaults filled in."""

    task_uuid: str
    model: str
    prompt: str
    width: int
    height: int
    number_results: int
    output_types: tuple[str, ...]
    output_format: str
    delivery: str
    webhook_url: str | None
    upload_endpoint: str | None
    safety: bool | None  # None: `safety` not used, so no NSFWContent field
    include_cost: bool
    ttl: int | None
    seed: int | None


def is_uuid4(value: Any) -> bool:
    """Whether `value` is a UUIDv4 string."""
    try:
        return isinstance(value, str) and uuid.UUID(value).version == 4
    except ValueError:
        return False


class _Checker:
    def __init__(self, task: dict[str, Any], config: RunwareConfig) -> None:
        self.task = task
        self.config = config
        self.errors: list[TaskError] = []

    def fail(self, param: str, message: str, **extra: Any) -> None:
        code = "invalid" + param[0].upper() + param[1:]
        self.errors.append(task_error(code, message, self.task, param, **extra))

    def integer(
        self, param: str, default: int | None, low: int, high: int, step: int = 1, required: bool = False
    ) -> int | None:
        value = self.task.get(param, default)
        if value is None and not required:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high or value % step:
            self.fail(
                param,
                f"Invalid value for '{param}' parameter. It must be an integer between {low} and {high}"
                + (f", in multiples of '{step}'." if step > 1 else "."),
                type="integer",
                min=low,
                max=high,
                multiplier=step,
            )
            return None
        return value

    def text(self, param: str, required: bool) -> str | None:
        value = self.task.get(param)
        low, high = self.config.min_prompt, self.config.max_prompt
        if value is None and not required:
            return None
        if not isinstance(value, str) or not low <= len(value) <= high:
            message = f"Invalid value for '{param}' parameter. It must be a string of {low} to {high} characters."
            self.fail(param, message, type="string", min=low, max=high)
            return None
        return value

    def url(self, param: str) -> str | None:
        value = self.task.get(param)
        if value is None:
            return None
        if not isinstance(value, str) or not value.startswith(("http://", "https://")):
            self.fail(param, f"Invalid value for '{param}' parameter. It must be an http(s) URL.")
            return None
        return value

    def output_types(self) -> tuple[str, ...]:
        value = self.task.get("outputType", "URL")
        values = value if isinstance(value, list) else [value]
        if not values or any(v not in OUTPUT_TYPES for v in values):
            self.fail("outputType", "Invalid value for 'outputType' parameter.", allowedValues=list(OUTPUT_TYPES))
            return ("URL",)
        return tuple(values)

    def output_format(self) -> str:
        value = self.task.get("outputFormat", "JPG")
        fmt = OUTPUT_FORMATS.get(value.lower()) if isinstance(value, str) else None
        if fmt is None:
            self.fail(
                "outputFormat", "Invalid value for 'outputFormat' parameter.", allowedValues=["JPG", "PNG", "WEBP"]
            )
            return "jpg"
        return fmt

    def safety(self) -> bool | None:
        value = self.task.get("safety")
        legacy = self.task.get("checkNSFW", self.task.get("checkNsfw"))
        if value is None:
            return None if legacy is None else bool(legacy)
        if not isinstance(value, dict) or value.get("mode", "fast") not in ("none", "fast", "full"):
            self.fail("safety", "Invalid value for 'safety' parameter.")
            return None
        if "mode" in value:
            return bool(value["mode"] != "none")
        return bool(value.get("checkContent", False))


def validate_image_task(task: dict[str, Any], config: RunwareConfig) -> ImageTask | list[TaskError]:
    """Return the validated task, or its errors."""
    check = _Checker(task, config)
    task_uuid = task.get("taskUUID")
    if not is_uuid4(task_uuid):
        check.fail("taskUUID", "Invalid value for 'taskUUID' parameter. It must be a UUIDv4 string.")
    model = task.get("model")
    if model not in config.models:
        check.errors.append(task_error("invalidModel", f"Invalid model '{model}'.", task, "model"))
    prompt = check.text("positivePrompt", required=True)
    check.text("negativePrompt", required=False)
    sides = (config.min_side, config.max_side, config.side_step)
    width = check.integer("width", None, *sides, required=True)
    height = check.integer("height", None, *sides, required=True)
    number_results = check.integer("numberResults", 1, 1, config.max_number_results)
    check.integer("steps", None, 1, 100)
    check.integer("outputQuality", None, 20, 99)
    seed = check.integer("seed", None, 1, 2**63 - 1)
    ttl = check.integer("ttl", None, 60, 2**31)
    delivery = task.get("deliveryMethod", "sync")
    if delivery not in ("sync", "async"):
        check.fail("deliveryMethod", "Invalid value for 'deliveryMethod' parameter.", allowedValues=["sync", "async"])
    cfg = task.get("CFGScale")
    if cfg is not None and (isinstance(cfg, bool) or not isinstance(cfg, int | float) or not 0 <= cfg <= 50):
        check.fail("CFGScale", "Invalid value for 'CFGScale' parameter. It must be a number between 0 and 50.")
    output_types = check.output_types()
    if ttl is not None and output_types != ("URL",):
        check.fail("ttl", "The 'ttl' parameter is only valid with outputType 'URL'.")
    parsed = ImageTask(
        task_uuid=str(task_uuid),
        model=str(model),
        prompt=prompt or "",
        width=width or 0,
        height=height or 0,
        number_results=number_results or 1,
        output_types=output_types,
        output_format=check.output_format(),
        delivery=str(delivery),
        webhook_url=check.url("webhookURL"),
        upload_endpoint=check.url("uploadEndpoint"),
        safety=check.safety(),
        include_cost=bool(task.get("includeCost", False)),
        ttl=ttl,
        seed=seed,
    )
    return check.errors or parsed


def cost(task: ImageTask) -> float:
    """Price of one image of `task` in USD."""
    megapixels = task.width * task.height / 1024**2
    return round(PRICES.get(task.model, 0.002) * megapixels, 6)
