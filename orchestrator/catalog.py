"""The model catalog: the seven models, their limits, defaults and native fields.

Limits come from ../shared/providers/: fal's documented defaults and presets (numeric bounds
there are third-party and marked UNCONFIRMED, so they are kept in one table here), and
Runware's generic imageInference reference (128-2048 in steps of 64, 1-20 results, ...).
Everything here is a pure function of its inputs. How stored parameters become a provider's
request body is the provider's business (`providers.registry.build_payload`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Provider = Literal["fal", "runware"]

FAL_SIZE_PRESETS: Mapping[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
DEFAULT_SIZE = "landscape_4_3"


@dataclass(frozen=True)
class Range:
    """An inclusive numeric bound, optionally on a grid."""

    low: float
    high: float
    step: int | None = None

    def problem(self, value: float) -> str | None:
        """Why `value` is out of bounds, or None."""
        if not self.low <= value <= self.high:
            return f"must be between {_num(self.low)} and {_num(self.high)}"
        if self.step and int(value) % self.step:
            return f"must be a multiple of {self.step}"
        return None


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass(frozen=True)
class ModelSpec:
    """One provider model: identity, limits, defaults and provider-native extras."""

    id: str
    provider: Provider
    family: str
    title: str
    steps: Range
    default_steps: int
    guidance: Range | None
    default_guidance: float | None
    num_images: Range
    size: Range
    output_formats: tuple[str, ...]
    default_output_format: str
    prompt_length: Range
    supports_loras: bool = False
    supports_negative_prompt: bool = False
    # The lowest seed the provider takes (Runware's start at 1: 0 would be refused only at submit).
    min_seed: int = 0
    native_fields: Mapping[str, Callable[[Any], str | None]] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        """The model as `GET /v1/models` shows it."""
        return {
            "id": self.id, "provider": self.provider, "family": self.family, "title": self.title,
            "defaults": {"steps": self.default_steps, "guidance": self.default_guidance,
                         "num_images": 1, "output_format": self.default_output_format,
                         "size": dict(zip(("width", "height"), FAL_SIZE_PRESETS[DEFAULT_SIZE], strict=True))},
            "limits": {
                "steps": [self.steps.low, self.steps.high],
                "guidance": [self.guidance.low, self.guidance.high] if self.guidance else None,
                "num_images": [self.num_images.low, self.num_images.high],
                "width_height": {"min": self.size.low, "max": self.size.high, "multiple_of": self.size.step},
                "prompt_length": [self.prompt_length.low, self.prompt_length.high],
            },
            "output_formats": list(self.output_formats),
            "supports_loras": self.supports_loras,
            "supports_negative_prompt": self.supports_negative_prompt,
            "native_fields": sorted(self.native_fields),
        }


def _is_bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in choices else f"must be one of {', '.join(choices)}"
    return check


def _int_range(low: int, high: int) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if not isinstance(v, int) or isinstance(v, bool):
            return "must be an integer"
        return Range(low, high).problem(v)
    return check


def _is_str(v: Any) -> str | None:
    return None if isinstance(v, str) and 0 < len(v) <= 200 else "must be a non-empty string"


def _runware_safety(v: Any) -> str | None:
    if not isinstance(v, dict) or set(v) - {"checkContent", "mode"}:
        return "must be an object with checkContent and/or mode"
    if "mode" in v and v["mode"] not in ("none", "fast", "full"):
        return "mode must be one of none, fast, full"
    if "checkContent" in v and not isinstance(v["checkContent"], bool):
        return "checkContent must be true or false"
    return None


def _no_sync_mode(v: Any) -> str | None:
    # sync_mode returns data URIs that fal does not keep; the pipeline needs URLs.
    return None if v is False else "is not supported: results must be URLs"


FAL_NATIVE = {"enable_safety_checker": _is_bool, "acceleration": _one_of("none", "regular", "high"),
              "sync_mode": _no_sync_mode}
RUNWARE_NATIVE = {
    "outputQuality": _int_range(20, 99), "scheduler": _is_str, "clipSkip": _int_range(0, 2),
    "safety": _runware_safety, "ttl": _int_range(60, 30 * 24 * 3600),
    "acceleration": _one_of("none", "low", "medium", "high"),
}

_FAL = {"provider": "fal", "size": Range(64, 4096), "num_images": Range(1, 4),
        "prompt_length": Range(1, 10000), "output_formats": ("jpeg", "png")}
_RUNWARE = {"provider": "runware", "size": Range(128, 2048, 64), "num_images": Range(1, 20),
            "steps": Range(1, 100), "default_steps": 20, "guidance": Range(0, 50), "default_guidance": 7.0,
            "prompt_length": Range(2, 3000), "output_formats": ("jpeg", "png", "webp"),
            "default_output_format": "jpeg", "supports_loras": True, "supports_negative_prompt": True,
            "native_fields": RUNWARE_NATIVE, "min_seed": 1}

MODELS: Mapping[str, ModelSpec] = {m.id: m for m in (
    ModelSpec(id="fal-ai/flux/dev", family="flux-dev", title="FLUX.1 [dev] on fal", steps=Range(1, 50),
              default_steps=28, guidance=Range(1, 20), default_guidance=3.5, default_output_format="jpeg",
              native_fields=FAL_NATIVE, **_FAL),  # type: ignore[arg-type]
    ModelSpec(id="fal-ai/flux/schnell", family="flux-schnell", title="FLUX.1 [schnell] on fal",
              steps=Range(1, 12), default_steps=4, guidance=Range(1, 20), default_guidance=3.5,
              default_output_format="jpeg", native_fields=FAL_NATIVE, **_FAL),  # type: ignore[arg-type]
    ModelSpec(id="fal-ai/flux-lora", family="flux-lora", title="FLUX.1 [dev] with LoRAs on fal",
              steps=Range(1, 50), default_steps=28, guidance=Range(1, 20), default_guidance=3.5,
              default_output_format="jpeg", supports_loras=True,
              native_fields={**FAL_NATIVE, "acceleration": _one_of("none", "regular")},
              **_FAL),  # type: ignore[arg-type]
    ModelSpec(id="rundiffusion-fal/juggernaut-flux/lightning", family="juggernaut-flux",
              title="Juggernaut FLUX Lightning on fal", steps=Range(1, 12), default_steps=4,
              guidance=None, default_guidance=None, default_output_format="png",
              native_fields={k: v for k, v in FAL_NATIVE.items() if k != "acceleration"},
              **_FAL),  # type: ignore[arg-type]
    ModelSpec(id="rundiffusion:130@100", family="juggernaut-flux", title="Juggernaut Pro Flux on Runware",
              **_RUNWARE),  # type: ignore[arg-type]
    ModelSpec(id="runware:100@1", family="flux-schnell", title="FLUX.1 [schnell] on Runware",
              **_RUNWARE),  # type: ignore[arg-type]
    ModelSpec(id="runware:101@1", family="flux-dev", title="FLUX.1 [dev] on Runware",
              **_RUNWARE),  # type: ignore[arg-type]
)}

# A family alias routes to its first model and may fail over to the second.
ALIASES: Mapping[str, tuple[str, str]] = {
    "flux-schnell": ("fal-ai/flux/schnell", "runware:100@1"),
    "flux-dev": ("fal-ai/flux/dev", "runware:101@1"),
    "juggernaut-flux": ("rundiffusion-fal/juggernaut-flux/lightning", "rundiffusion:130@100"),
}

COMMON_FIELDS = ("prompt", "negative_prompt", "width", "height", "image_size", "steps", "guidance",
                 "seed", "num_images", "output_format", "loras", "native")
MAX_SEED = 2**64 - 1


class CatalogError(ValueError):
    """One or more invalid fields: a list of (field, message)."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))
        self.problems = problems


def resolve_model(name: str) -> ModelSpec:
    """The primary model for a native id or family alias."""
    if name in MODELS:
        return MODELS[name]
    if name in ALIASES:
        return MODELS[ALIASES[name][0]]
    raise CatalogError([("model", unknown_model(name))])


def unknown_model(name: str) -> str:
    """`unknown model 'flux-schnel'; did you mean flux-schnell?`: the closest ids and aliases only."""
    names = [*ALIASES, *MODELS]
    close = difflib.get_close_matches(str(name).lower(), names, n=3, cutoff=0.6)
    if not close:  # "schnell", "juggernaut": a word of a model's name
        close = [n for n in names if str(name).lower() in n.lower()][:3]
    listed = " or ".join([", ".join(close[:-1]), close[-1]] if len(close) > 1 else close)
    hint = f"did you mean {listed}?" if close else "GET /v1/models lists the models and aliases"
    return f"unknown model {name!r}; {hint}"


def known_models() -> str:
    """Every model id and family alias, once (for the top of an error, not each item)."""
    return ", ".join([*ALIASES, *MODELS])


def fallback_model(requested: str, current: str) -> ModelSpec | None:
    """The other provider's model for a family alias, if the job was submitted by alias."""
    pair = ALIASES.get(requested)
    if not pair:
        return None
    other = pair[1] if pair[0] == current else pair[0]
    return MODELS[other]


def normalize(spec: ModelSpec, params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate common parameters for `spec`, fill defaults, and return the stored form.

    The result always has explicit width, height, steps, num_images and output_format, so
    the mapping to either provider (and failover between them) is exact.
    """
    problems: list[tuple[str, str]] = []
    out: dict[str, Any] = {}
    prompt = params.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        problems.append(("prompt", "is required"))
    elif msg := spec.prompt_length.problem(len(prompt)):
        problems.append(("prompt", f"length {msg}"))
    else:
        out["prompt"] = prompt
    out.update(_size(spec, params, problems))
    out.update(_numbers(spec, params, problems))
    out.update(_extras(spec, params, problems))
    if problems:
        raise CatalogError(problems)
    return out


def _size(spec: ModelSpec, params: Mapping[str, Any], problems: list[tuple[str, str]]) -> dict[str, Any]:
    preset = params.get("image_size")
    width, height = params.get("width"), params.get("height")
    if preset is not None and (width is not None or height is not None):
        problems.append(("image_size", "give either image_size or width/height, not both"))
        return {}
    if isinstance(preset, str):
        if preset not in FAL_SIZE_PRESETS:
            problems.append(("image_size", f"must be a preset ({', '.join(FAL_SIZE_PRESETS)}) "
                                           "or {width, height}"))
            return {}
        width, height = FAL_SIZE_PRESETS[preset]
    elif isinstance(preset, Mapping):
        width, height = preset.get("width"), preset.get("height")
    elif preset is not None:
        problems.append(("image_size", "must be a preset name or {width, height}"))
        return {}
    if width is None and height is None:
        width, height = FAL_SIZE_PRESETS[DEFAULT_SIZE]
    result: dict[str, Any] = {}
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool):
            problems.append((name, "is required with the other dimension and must be an integer"))
        elif msg := spec.size.problem(value):
            problems.append((name, f"{msg} for {spec.id}"))
        else:
            result[name] = value
    return result


def _numbers(spec: ModelSpec, params: Mapping[str, Any], problems: list[tuple[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    checks: list[tuple[str, Range | None, Any, bool]] = [
        ("steps", spec.steps, spec.default_steps, True),
        ("guidance", spec.guidance, spec.default_guidance, False),
        ("num_images", spec.num_images, 1, True),
    ]
    for name, bound, default, integral in checks:
        value = params.get(name)
        if value is None:
            if default is not None:
                out[name] = default
            continue
        if bound is None:
            problems.append((name, f"is not supported by {spec.id}"))
        elif isinstance(value, bool) or not isinstance(value, int | float) or (
                integral and not isinstance(value, int)):
            problems.append((name, "must be an integer" if integral else "must be a number"))
        elif msg := bound.problem(value):
            problems.append((name, f"{msg} for {spec.id}"))
        else:
            out[name] = value
    seed = params.get("seed")
    if seed is not None:
        low = spec.min_seed
        if isinstance(seed, bool) or not isinstance(seed, int) or not low <= seed <= MAX_SEED:
            problems.append(("seed", f"must be an integer between {low} and {MAX_SEED}"))
        else:
            out["seed"] = seed
    return out


def _extras(spec: ModelSpec, params: Mapping[str, Any], problems: list[tuple[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    fmt = params.get("output_format") or spec.default_output_format
    fmt = "jpeg" if fmt == "jpg" else fmt
    if fmt not in spec.output_formats:
        problems.append(("output_format", f"must be one of {', '.join(spec.output_formats)} for {spec.id}"))
    else:
        out["output_format"] = fmt
    negative = params.get("negative_prompt")
    if negative is not None:
        if not spec.supports_negative_prompt:
            problems.append(("negative_prompt", f"is not supported by {spec.id}"))
        elif not isinstance(negative, str) or (msg := spec.prompt_length.problem(len(negative))):
            problems.append(("negative_prompt", "must be a string of 2 to 3000 characters"))
        else:
            out["negative_prompt"] = negative
    loras = params.get("loras")
    if loras:
        out["loras"] = _loras(spec, loras, problems)
    native = params.get("native") or {}
    if not isinstance(native, Mapping):
        problems.append(("native", "must be an object"))
        native = {}
    for key, value in native.items():
        check = spec.native_fields.get(key)
        if check is None:
            allowed = ", ".join(sorted(spec.native_fields)) or "none"
            problems.append((f"native.{key}", f"is not a native field of {spec.id} (allowed: {allowed})"))
        elif msg := check(value):
            problems.append((f"native.{key}", msg))
    if native and not any(p[0].startswith("native.") for p in problems):
        out["native"] = dict(native)
    return out


def _loras(spec: ModelSpec, loras: Any, problems: list[tuple[str, str]]) -> list[dict[str, Any]]:
    if not spec.supports_loras:
        problems.append(("loras", f"are not supported by {spec.id}"))
        return []
    if not isinstance(loras, list) or len(loras) > 5:
        problems.append(("loras", "must be a list of at most 5 {path, scale} objects"))
        return []
    out = []
    for i, lora in enumerate(loras):
        path = lora.get("path") if isinstance(lora, Mapping) else None
        scale = lora.get("scale", 1.0) if isinstance(lora, Mapping) else None
        if not isinstance(path, str) or not path:
            problems.append((f"loras[{i}].path", "is required"))
        elif isinstance(scale, bool) or not isinstance(scale, int | float) or not -4 <= scale <= 4:
            problems.append((f"loras[{i}].scale", "must be a number between -4 and 4"))
        else:
            out.append({"path": path, "scale": float(scale)})
    return out


def for_fallback(params: Mapping[str, Any], target: ModelSpec) -> dict[str, Any]:
    """Re-validate stored parameters for the other provider's model of the same family.

    Provider-native fields do not carry over; steps and guidance fall back to the target's
    defaults when out of its range. Raises CatalogError when the job cannot move.
    """
    common = {k: v for k, v in params.items() if k not in ("native", "steps", "guidance")}
    for key in ("steps", "guidance"):
        bound = target.steps if key == "steps" else target.guidance
        if key in params and bound is not None and bound.problem(params[key]) is None:
            common[key] = params[key]
    return normalize(target, common)
