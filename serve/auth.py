"""Optional bearer-token authentication of the app's HTTP routes.

The token comes from `AppArgs.api_token_file` (what the Helm chart mounts from a Secret) or, without
one, from the replica's GANFORGE_API_TOKEN environment variable; neither: no authentication.
`BearerAuth` is plain ASGI middleware around the whole app, fast path included, inside the request
metrics (a 401 is counted like any other status). Open without a token: `/healthz` (probes), and
the pages that hold no served data: the web page `/` (its API calls send the token) and the API
documentation `/docs` + `/openapi.json` (the same for every deployment).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ganforge.serve.middleware import relative_path, send_json

TOKEN_ENV = "GANFORGE_API_TOKEN"
OPEN_PATHS = frozenset({"/", "/healthz", "/docs", "/openapi.json"})
UNAUTHORIZED = "missing or invalid API token"


def _checked(token: str, source: str) -> str:
    token = token.strip()
    if not token:
        raise ValueError(f"{source} is empty: no API token to check requests against")
    # Sent in an HTTP header as `Bearer <token>`: printable ASCII, no spaces.
    if not (token.isascii() and token.isprintable()) or any(c.isspace() for c in token):
        raise ValueError(f"{source}: the API token must be printable ASCII without spaces")
    return token


def read_api_token(token_file: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The API token: the content of `token_file` (whitespace stripped), else $GANFORGE_API_TOKEN,
    else None (no authentication). Raises ValueError for an unreadable or empty file or a blank
    variable: a deployment that asked for a token never runs open. Messages never hold the token.
    """
    if token_file is not None:
        try:
            text = Path(token_file).read_bytes().decode("utf-8")
        except OSError as e:
            raise ValueError(f"api_token_file {token_file}: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise ValueError(f"api_token_file {token_file}: not UTF-8 text") from None
        return _checked(text, f"api_token_file {token_file}")
    value = environ.get(TOKEN_ENV)
    return None if value is None else _checked(value, TOKEN_ENV)


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


class BearerAuth:
    """Refuses every request without `Authorization: Bearer <token>` with a 401 (the same body
    whatever was wrong, and `WWW-Authenticate: Bearer`), except those to OPEN_PATHS.

    The comparison is constant-time (`hmac.compare_digest`) over SHA-256 digests, so neither the
    token's content nor its length shows in the timing."""

    def __init__(self, app, token: str):
        self.app = app
        self._expected = _digest(token.encode("ascii"))

    def authorized(self, scope: dict[str, Any]) -> bool:
        for key, value in scope.get("headers", ()):
            if key == b"authorization":  # the first one only
                scheme, _, credentials = value.partition(b" ")
                given = _digest(credentials.strip())
                ok = hmac.compare_digest(given, self._expected)
                return ok and scheme.lower() == b"bearer"
        return False

    async def __call__(self, scope, receive, send):
        if (
            scope["type"] not in ("http", "websocket")
            or relative_path(scope) in OPEN_PATHS
            or self.authorized(scope)
        ):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # policy violation
        else:
            await send_json(send, 401, UNAUTHORIZED, [(b"www-authenticate", b"Bearer")])
