"""The error tree, Retry-After parsing, redaction and the adapter registry."""

from __future__ import annotations

import pickle
from email.utils import formatdate

import httpx
import pytest

from orchestrator.providers.errors import (
    AuthenticationFailed,
    InsufficientCredits,
    NotFound,
    PermanentProviderError,
    ProviderError,
    RateLimited,
    ResultExpired,
    TransientProviderError,
    parse_retry_after,
)
from orchestrator.providers.fal.adapter import FalAdapter
from orchestrator.providers.registry import make_adapter
from orchestrator.providers.runware.adapter import RunwareAdapter

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        (" 1.5 ", 1.5),
        ("0", 0.0),
        ("-3", 0.0),
        ("", None),
        (None, None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_retry_after_http_date_in_future() -> None:
    header = formatdate(NOW + 120, usegmt=True)
    assert parse_retry_after(header, now=NOW) == pytest.approx(120.0)


def test_retry_after_http_date_in_past_is_zero() -> None:
    assert parse_retry_after(formatdate(NOW - 50, usegmt=True), now=NOW) == 0.0


def test_retry_after_minus_zero_zone_is_utc() -> None:
    header = formatdate(NOW + 30, usegmt=True).replace("GMT", "-0000")
    assert parse_retry_after(header, now=NOW) == pytest.approx(30.0)


def test_tree_shape_and_retry_flags() -> None:
    assert issubclass(RateLimited, TransientProviderError)
    assert issubclass(TransientProviderError, ProviderError)
    for cls in (AuthenticationFailed, InsufficientCredits, NotFound, ResultExpired):
        assert issubclass(cls, PermanentProviderError)
    assert issubclass(ResultExpired, NotFound)
    assert RateLimited.retry_call and RateLimited.retry_job
    assert not PermanentProviderError.retry_job
    assert not AuthenticationFailed.retry_job
    assert NotFound.retry_job and not NotFound.retry_call
    assert ResultExpired.retry_job


def roundtrip(error: ProviderError) -> ProviderError:
    # Our own bytes, never untrusted input.
    return pickle.loads(pickle.dumps(error))  # noqa: S301


def test_errors_survive_pickling() -> None:
    copy = roundtrip(RateLimited("fal", "slow down", 429, "rate", parameter="p", retry_after=3.0))
    assert isinstance(copy, RateLimited)
    assert (copy.provider, copy.message, copy.status_code, copy.code) == ("fal", "slow down", 429, "rate")
    assert copy.retry_after == 3.0
    assert copy.parameter == "p"
    permanent = roundtrip(PermanentProviderError("runware", "bad", 400, parameter="width"))
    assert permanent.parameter == "width"


def test_message_is_redacted_and_bounded() -> None:
    error = ProviderError("fal", "echo Authorization: Key abcdef:0123456789 ?X-Amz-Signature=deadbeef" * 20)
    assert "0123456789" not in error.message
    assert "deadbeef" not in error.message
    assert len(error.message) <= 500


def test_str_and_to_dict() -> None:
    error = PermanentProviderError("runware", "Invalid width", 400, "invalidWidth", parameter="width")
    assert str(error) == "runware: Invalid width (HTTP 400, invalidWidth, parameter=width)"
    assert error.to_dict() == {
        "type": "PermanentProviderError",
        "provider": "runware",
        "message": "Invalid width",
        "status_code": 400,
        "code": "invalidWidth",
        "parameter": "width",
        "retry_job": False,
    }
    assert str(TransientProviderError("fal", "boom")) == "fal: boom"


def test_registry_builds_each_adapter() -> None:
    client = httpx.Client()
    fal = make_adapter("fal", api_key="k:s", client=client)
    runware = make_adapter("runware", api_key="rw", base_url="http://127.0.0.1:9/v1", client=client)
    assert isinstance(fal, FalAdapter)
    assert fal.name == "fal"
    assert isinstance(runware, RunwareAdapter)
    assert runware.name == "runware"
    with pytest.raises(ValueError, match="unknown provider"):
        make_adapter("replicate", api_key="x")
    client.close()
