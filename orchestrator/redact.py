"""Keep secrets out of logs, errors and API responses."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Query parameters that carry a credential or a signature in presigned URLs
# (AWS SigV4/SigV2, our local storage backend, webhook tokens).
_SECRET_PARAMS = {
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "signature",
    "sig",
    "token",
    "apikey",
    "api_key",
    "key",
    "awsaccesskeyid",
}
_AUTH_HEADER = re.compile(r"(?i)\b(Key|Bearer)\s+[A-Za-z0-9._:\-+/=]{6,}")
# A secret query parameter in free text, also inside a URL that is itself a query value, so
# percent-encoded once (`fal_webhook=http%3A%2F%2F...%3Ftoken%3D<token>`, as httpx logs the
# fal submit URL) or twice (`%253F`, `%253D`). The value ends at the next separator in any of
# those encodings, whitespace, a quote or an angle bracket.
_SEPARATOR = r"(?:[?&;]|%3F|%26|%253F|%2526)"
_EQUALS = r"(?:=|%3D|%253D)"
_VALUE_END = r"(?:[&;#\s\"'<>\\]|%26|%2526|%23|%2523)"
_QUERY_SECRET = re.compile(
    rf"(?i)({_SEPARATOR}(?:{'|'.join(sorted(_SECRET_PARAMS, key=len, reverse=True))}){_EQUALS})"
    rf"(?:(?!{_VALUE_END}).)+"
)


def redact_url(url: str) -> str:
    """Return `url` with secret-bearing query parameter values replaced by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if not parts.query:
        return url
    query = [
        (k, "***" if k.lower() in _SECRET_PARAMS else v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*")))


def redact_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove auth header values, presigned signatures and any of `secrets` from free text."""
    for secret in secrets:
        if secret and len(secret) >= 6:
            text = text.replace(secret, "***")
    text = _AUTH_HEADER.sub(lambda m: f"{m.group(1)} ***", text)
    return _QUERY_SECRET.sub(r"\1***", text)
