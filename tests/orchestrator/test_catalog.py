"""The model catalog against the documented defaults and limits (pure functions)."""

from __future__ import annotations

import pytest

from orchestrator import catalog as c
from orchestrator.providers.registry import build_payload


@pytest.mark.parametrize(("model", "steps", "guidance", "fmt"), [
    ("fal-ai/flux/dev", 28, 3.5, "jpeg"),
    ("fal-ai/flux/schnell", 4, 3.5, "jpeg"),
    ("fal-ai/flux-lora", 28, 3.5, "jpeg"),
    ("rundiffusion-fal/juggernaut-flux/lightning", 4, None, "png"),
    ("rundiffusion:130@100", 20, 7.0, "jpeg"),
    ("runware:100@1", 20, 7.0, "jpeg"),
    ("runware:101@1", 20, 7.0, "jpeg"),
])
def test_documented_defaults(model: str, steps: int, guidance: float | None, fmt: str) -> None:
    params = c.normalize(c.MODELS[model], {"prompt": "a fox"})
    assert params["steps"] == steps and params.get("guidance") == guidance and params["output_format"] == fmt
    assert (params["width"], params["height"]) == (1024, 768)  # landscape_4_3, fal's default size
    assert params["num_images"] == 1


def test_fal_native_request() -> None:
    spec = c.MODELS["fal-ai/flux/dev"]
    body = build_payload(spec, c.normalize(spec, {"prompt": "p", "image_size": "square_hd", "seed": 2**64 - 1,
                                                "native": {"acceleration": "high"}}))
    assert body == {"prompt": "p", "image_size": "square_hd", "num_inference_steps": 28, "num_images": 1,
                    "output_format": "jpeg", "enable_safety_checker": True, "guidance_scale": 3.5,
                    "seed": 2**64 - 1, "acceleration": "high"}
    custom = build_payload(spec, c.normalize(spec, {"prompt": "p", "width": 800, "height": 600}))
    assert custom["image_size"] == {"width": 800, "height": 600}


def test_fal_lora_and_lightning() -> None:
    lora = c.MODELS["fal-ai/flux-lora"]
    body = build_payload(lora, c.normalize(lora, {"prompt": "p", "loras": [{"path": "https://x/l.safetensors"}]}))
    assert body["loras"] == [{"path": "https://x/l.safetensors", "scale": 1.0}]
    light = c.MODELS["rundiffusion-fal/juggernaut-flux/lightning"]
    assert "guidance_scale" not in build_payload(light, c.normalize(light, {"prompt": "p"}))
    with pytest.raises(c.CatalogError) as err:
        c.normalize(light, {"prompt": "p", "guidance": 2})
    assert err.value.problems == [("guidance", "is not supported by rundiffusion-fal/juggernaut-flux/lightning")]


def test_runware_native_request() -> None:
    spec = c.MODELS["rundiffusion:130@100"]
    params = c.normalize(spec, {"prompt": "a fox", "negative_prompt": "blurry", "width": 512, "height": 512,
                                "num_images": 3, "output_format": "webp", "seed": 7, "guidance": 4.5,
                                "loras": [{"path": "civitai:1@2", "scale": 0.5}],
                                "native": {"outputQuality": 80}})
    assert build_payload(spec, params) == {
        "model": "rundiffusion:130@100", "positivePrompt": "a fox", "width": 512, "height": 512, "steps": 20,
        "numberResults": 3, "outputType": "URL", "outputFormat": "WEBP", "CFGScale": 4.5, "seed": 7,
        "negativePrompt": "blurry", "lora": [{"model": "civitai:1@2", "weight": 0.5}], "outputQuality": 80}


@pytest.mark.parametrize(("model", "params", "field"), [
    ("runware:100@1", {"width": 100, "height": 512}, "width"),
    ("runware:100@1", {"width": 2112, "height": 512}, "width"),
    ("runware:100@1", {"num_images": 21}, "num_images"),
    ("runware:100@1", {"steps": 101}, "steps"),
    ("runware:100@1", {"guidance": 51}, "guidance"),
    ("runware:100@1", {"prompt": "x"}, "prompt"),  # Runware prompts are 2-3000 characters
    ("runware:100@1", {"native": {"outputQuality": 5}}, "native.outputQuality"),
    ("runware:100@1", {"native": {"safety": {"mode": "paranoid"}}}, "native.safety"),
    ("fal-ai/flux/dev", {"num_images": 5}, "num_images"),
    ("fal-ai/flux/dev", {"steps": 51}, "steps"),
    ("fal-ai/flux/schnell", {"steps": 13}, "steps"),
    ("fal-ai/flux/dev", {"guidance": 0.5}, "guidance"),
    ("fal-ai/flux/dev", {"width": 8192, "height": 512}, "width"),
    ("fal-ai/flux-lora", {"native": {"acceleration": "high"}}, "native.acceleration"),
    ("fal-ai/flux-lora", {"loras": [{"path": "x", "scale": 9}]}, "loras[0].scale"),
])
def test_limits(model: str, params: dict, field: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(c.CatalogError) as err:
        c.normalize(c.MODELS[model], {"prompt": "a fox", **params})
    assert [f for f, _ in err.value.problems] == [field]


def test_aliases_and_fallback() -> None:
    assert c.resolve_model("flux-dev").id == "fal-ai/flux/dev"
    fb = c.fallback_model("flux-dev", "fal-ai/flux/dev")
    assert fb is not None and fb.id == "runware:101@1"
    assert c.fallback_model("fal-ai/flux/dev", "fal-ai/flux/dev") is None
    params = c.normalize(c.MODELS["fal-ai/flux/dev"],
                         {"prompt": "a fox", "steps": 40, "native": {"acceleration": "high"}})
    moved = c.for_fallback(params, c.MODELS["runware:101@1"])
    assert moved["steps"] == 40 and "native" not in moved and moved["width"] == 1024
    odd = c.normalize(c.MODELS["fal-ai/flux/dev"], {"prompt": "a fox", "width": 1000, "height": 1000})
    with pytest.raises(c.CatalogError):
        c.for_fallback(odd, c.MODELS["runware:101@1"])  # not a multiple of 64 there


def test_unknown_model_suggests_the_closest_names_not_the_whole_list() -> None:
    with pytest.raises(c.CatalogError) as err:
        c.resolve_model("flux-schnel")
    message = err.value.problems[0][1]
    assert message.startswith("unknown model 'flux-schnel'; did you mean flux-schnell")
    assert "juggernaut" not in message and "runware:101@1" not in message
    assert "did you mean runware:100@1" in c.unknown_model("runware:100")
    assert "did you mean fal-ai/flux-lora?" in c.unknown_model("lora")  # a word of the name
    assert c.unknown_model("dalle") == "unknown model 'dalle'; GET /v1/models lists the models and aliases"


def test_runware_seeds_start_at_one_fal_accepts_zero() -> None:
    # Found by the chaos run: seed 0 passed intake and Runware refused it at submit (invalidSeed).
    with pytest.raises(c.CatalogError) as err:
        c.normalize(c.MODELS["runware:100@1"], {"prompt": "a red fox", "seed": 0})
    assert err.value.problems == [("seed", f"must be an integer between 1 and {c.MAX_SEED}")]
    assert c.normalize(c.MODELS["runware:100@1"], {"prompt": "a red fox", "seed": 1})["seed"] == 1
    assert c.normalize(c.MODELS["fal-ai/flux/schnell"], {"prompt": "p", "seed": 0})["seed"] == 0
