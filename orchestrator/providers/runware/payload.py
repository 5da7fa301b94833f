"""Our stored (normalized) parameters as a Runware imageInference task."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.catalog import ModelSpec

_OUTPUT_FORMATS = {"jpeg": "JPG", "png": "PNG", "webp": "WEBP"}


def build_payload(spec: ModelSpec, p: Mapping[str, Any]) -> dict[str, Any]:
    """The task body for `spec` (the adapter adds taskType, taskUUID and the webhook)."""
    body: dict[str, Any] = {
        "model": spec.id,
        "positivePrompt": p["prompt"],
        "width": p["width"],
        "height": p["height"],
        "steps": p["steps"],
        "numberResults": p["num_images"],
        "outputType": "URL",
        "outputFormat": _OUTPUT_FORMATS[p["output_format"]],
    }
    if "guidance" in p:
        body["CFGScale"] = p["guidance"]
    if "seed" in p:
        body["seed"] = p["seed"]
    if p.get("negative_prompt"):
        body["negativePrompt"] = p["negative_prompt"]
    if p.get("loras"):
        body["lora"] = [{"model": x["path"], "weight": x["scale"]} for x in p["loras"]]
    body.update(p.get("native", {}))
    return body
