"""URLs as they are recorded and shown: without the credentials they may carry.

A source URL may hold what opens it: a signed link's signature (`X-Amz-Signature=...`), an
API token in its query (`?token=...`), a user's password (`https://user:secret@host/`). The
fetch needs them; nothing else does. A run once copied them into the console and Prefect's
log, the registry (its config and its reproduce command), every document's `source` column in
the corpus Parquet, the stage journal and the report: anyone who could read the run's history
could open the data, or the account. What is kept instead names the same file: the address
with those values written as `***`.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

HIDDEN = "***"
# Query parameters whose value opens something, by how their names end: `token`,
# `access_token`, `api_key`, `apikey`, Azure's `sig`, `X-Amz-Signature`, `X-Amz-Credential`,
# `X-Amz-Security-Token`, `X-Goog-Signature`, `password`, `jwt`, `credentials`, `sessionid`,
# PHP's `PHPSESSID`, `authorization`, and with marks or digits after the name (`__token__`,
# `token[]`, an array's entry `token[0]`, `password2`, `keys`); not `author` or `page`.
SECRET_PARAMETER = re.compile(
    r"(tokens?|keys?|sig|signature|secrets?|password|passwd|pwd|auth|authorization"
    r"|credentials?|session|sessionid|sessid|jwt)"
    r"(?:\[[^\]]*\]|[^a-z\[\]])*$",
    re.IGNORECASE,
)
URL_IN_TEXT = re.compile(r"https?://[^\s'\"<>]+", re.IGNORECASE)


def shown_url(url: str) -> str:
    """`url` with the password or token of its user part and the values of its secret-named
    query parameters written as `***`; any other URL as it is, byte for byte."""
    try:
        parts = urlsplit(url)
    except ValueError:  # an address urllib cannot parse (a bad IPv6 literal) holds no parts
        return url
    netloc = parts.netloc
    if "@" in netloc:
        user_part, host = netloc.rsplit("@", 1)
        user, has_password, _ = user_part.partition(":")
        # A user part alone may be a token (`https://ghp_...@github.com/`): hidden whole.
        netloc = f"{user}:{HIDDEN}@{host}" if has_password else f"{HIDDEN}@{host}"
    query = _shown_parameters(parts.query)
    # A fragment of parameters carries tokens too: OAuth's implicit flow (`#access_token=`).
    fragment = _shown_parameters(parts.fragment)
    if (netloc, query, fragment) == (parts.netloc, parts.query, parts.fragment):
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query, fragment=fragment))


def _shown_parameters(parameters: str) -> str:
    return "&".join(_shown_parameter(piece) for piece in parameters.split("&"))


def _shown_parameter(piece: str) -> str:
    name, has_value, value = piece.partition("=")
    if has_value and value and SECRET_PARAMETER.search(unquote(name)):
        return f"{name}={HIDDEN}"
    return piece


def without_url_credentials(value: Any) -> Any:
    """`value` (text, or lists and dicts of it, as a config's JSON) with every URL in its text
    as `shown_url` gives it."""
    if isinstance(value, str):
        return URL_IN_TEXT.sub(lambda found: shown_url(found.group()), value)
    if isinstance(value, list):
        return [without_url_credentials(item) for item in value]
    if isinstance(value, dict):
        return {key: without_url_credentials(item) for key, item in value.items()}
    return value
