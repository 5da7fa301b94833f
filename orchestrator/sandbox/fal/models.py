"""The four fal FLUX models: input defaults, validation into fal's 422 `detail` list, and error bodies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# fal's documented image_size presets. orchestrator/catalog.py has the same table (FAL_SIZE_PRESETS)
# on purpose: the emulator is written from fal's documentation, not from the adapters' knowledge, so
# a wrong preset in the catalog shows up as a mismatch in the end-to-end tests instead of being
# agreed with. The sandboxes import nothing from orchestrator.catalog or orchestrator.providers.
IMAGE_SIZE_PRESETS = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
ERRORS_URL = "https://docs.fal.ai/errors#"


@dataclass(frozen=True)
class FalModel:
    """Per-model defaults and limits (limits for steps are the commonly cited ones; see fal.md (e))."""

    endpoint: str
    default_steps: int
    max_steps: int
    has_guidance: bool = True
    default_format: str = "jpeg"
    accelerations: tuple[str, ...] | None = ("none", "regular", "high")
    has_loras: bool = False


MODELS = {
    m.endpoint: m
    for m in (
        FalModel("fal-ai/flux/dev", 28, 50),
        FalModel("fal-ai/flux/schnell", 4, 12),
        FalModel("fal-ai/flux-lora", 28, 50, accelerations=("none", "regular"), has_loras=True),
        FalModel(
            "rundiffusion-fal/juggernaut-flux/lightning",
            4,
            12,
            has_guidance=False,
            default_format="png",
            accelerations=None,
        ),
    )
}


@dataclass
class FalInput:
    """A validated request, defaults filled in."""

    prompt: str
    width: int
    height: int
    num_images: int
    output_format: str
    seed: int | None
    sync_mode: bool
    enable_safety_checker: bool
    num_inference_steps: int


def detail(field: str | None, msg: str, type_: str, value: Any = None, **ctx: Any) -> dict[str, Any]:
    """One item of a 422 `detail` list."""
    loc: list[str] = ["body"] if field is None else ["body", *field.split(".")]
    item: dict[str, Any] = {"loc": loc, "msg": msg, "type": type_, "url": ERRORS_URL + type_, "input": value}
    if ctx:
        item["ctx"] = ctx
    return item


class _Checker:
    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload
        self.errors: list[dict[str, Any]] = []

    def number(self, name: str, default: Any, low: float, high: float, integer: bool = True) -> Any:
        value: Any = self.payload.get(name, default)
        if not _is_number(value, integer):
            kind = "integer" if integer else "number"
            self.errors.append(detail(name, f"Input should be a valid {kind}", f"{kind}_type", value))
            return value
        if value < low:
            self.errors.append(
                detail(name, f"Input should be greater than or equal to {low}", "greater_than_equal", value, ge=low)
            )
        elif value > high:
            self.errors.append(
                detail(name, f"Input should be less than or equal to {high}", "less_than_equal", value, le=high)
            )
        return value

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.payload.get(name, default)
        if value not in allowed:
            options = ", ".join(repr(a) for a in allowed)
            self.errors.append(detail(name, f"Input should be {options}", "one_of", value, expected=list(allowed)))
        return str(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.payload.get(name, default)
        if not isinstance(value, bool):
            self.errors.append(detail(name, "Input should be a valid boolean", "bool_type", value))
        return bool(value)

    def prompt(self) -> str:
        if "prompt" not in self.payload:
            self.errors.append(detail("prompt", "field required", "value_error.missing"))
            return ""
        value = self.payload["prompt"]
        if not isinstance(value, str):
            self.errors.append(detail("prompt", "Input should be a valid string", "string_type", value))
            return ""
        return value

    def image_size(self, max_side: int) -> tuple[int, int]:
        value = self.payload.get("image_size", "landscape_4_3")
        if isinstance(value, str):
            if value in IMAGE_SIZE_PRESETS:
                return IMAGE_SIZE_PRESETS[value]
            self.choice("image_size", value, tuple(IMAGE_SIZE_PRESETS))
            return 0, 0
        if not isinstance(value, dict):
            self.errors.append(detail("image_size", "Input should be a preset or an object", "model_type", value))
            return 0, 0
        sub = _Checker(value)
        width = sub.number("width", 512, 1, max_side)
        height = sub.number("height", 512, 1, max_side)
        for err in sub.errors:
            err["loc"] = ["body", "image_size", *err["loc"][1:]]
        self.errors.extend(sub.errors)
        return (width, height) if not sub.errors else (0, 0)

    def loras(self) -> None:
        value = self.payload.get("loras", [])
        if not isinstance(value, list):
            self.errors.append(detail("loras", "Input should be a valid list", "list_type", value))
            return
        for index, lora in enumerate(value):
            if not isinstance(lora, dict) or not isinstance(lora.get("path"), str):
                self.errors.append(detail(f"loras.{index}.path", "field required", "value_error.missing", lora))
            elif "scale" in lora:
                sub = _Checker(lora)
                sub.number("scale", 1, -4, 4, integer=False)
                if sub.errors:
                    self.errors.append(detail(f"loras.{index}.scale", sub.errors[0]["msg"], sub.errors[0]["type"]))


def _is_number(value: Any, integer: bool) -> bool:
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool)


def validate(model: FalModel, payload: Any, max_side: int, max_images: int) -> FalInput | list[dict[str, Any]]:
    """Return the validated input, or the 422 `detail` list."""
    if not isinstance(payload, dict):
        return [detail(None, "Input should be a valid dictionary", "dict_type", payload)]
    check = _Checker(payload)
    prompt = check.prompt()
    width, height = check.image_size(max_side)
    steps = check.number("num_inference_steps", model.default_steps, 1, model.max_steps)
    if model.has_guidance:
        check.number("guidance_scale", 3.5, 1, 20, integer=False)
    num_images = check.number("num_images", 1, 1, max_images)
    output_format = check.choice("output_format", model.default_format, ("jpeg", "png"))
    if model.accelerations:
        check.choice("acceleration", "none", model.accelerations)
    safety = check.boolean("enable_safety_checker", True)
    sync_mode = check.boolean("sync_mode", False)
    seed = payload.get("seed")
    if seed is not None:
        check.number("seed", None, 0, float("inf"))
    if model.has_loras:
        check.loras()
    if check.errors:
        return check.errors
    return FalInput(prompt, width, height, num_images, output_format, seed, sync_mode, safety, steps)


# Queue-level error types and messages per HTTP status (fal.md (d), request errors).
FAILURES = {
    500: ("Internal server error", "runner_server_error"),
    502: ("Runner returned an incomplete response", "runner_incomplete_response"),
    503: ("Runner disconnected", "runner_disconnected"),
    504: ("Request timed out", "request_timeout"),
    499: ("Request cancelled by the client", "client_cancelled"),
}


def failure_body(status: int, prompt: str) -> dict[str, Any]:
    """The result body of a failed generation with HTTP `status`."""
    if status == 422:
        msg = "The content could not be processed because it contained material flagged by a content checker."
        return {"detail": [detail("prompt", msg, "content_policy_violation", prompt)]}
    message, error_type = FAILURES.get(status, FAILURES[500])
    return {"detail": message, "error_type": error_type}
