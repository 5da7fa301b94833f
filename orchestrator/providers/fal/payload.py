"""Our stored (normalized) parameters as fal's FLUX model input."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.catalog import FAL_SIZE_PRESETS, ModelSpec


def build_payload(spec: ModelSpec, p: Mapping[str, Any]) -> dict[str, Any]:
    """The request body for `spec`: sizes that match a preset are sent by its name."""
    size = (p["width"], p["height"])
    preset = next((name for name, wh in FAL_SIZE_PRESETS.items() if wh == size), None)
    body: dict[str, Any] = {
        "prompt": p["prompt"],
        "image_size": preset or {"width": size[0], "height": size[1]},
        "num_inference_steps": p["steps"],
        "num_images": p["num_images"],
        "output_format": p["output_format"],
        "enable_safety_checker": True,
    }
    if spec.guidance is not None and "guidance" in p:
        body["guidance_scale"] = p["guidance"]
    if "seed" in p:
        body["seed"] = p["seed"]
    if p.get("loras"):
        body["loras"] = [{"path": x["path"], "scale": x["scale"]} for x in p["loras"]]
    body.update(p.get("native", {}))
    return body
