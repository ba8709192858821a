"""Who may read the console and who may act.

- Reading (``/ui/api/...``): open when neither an admin token nor an API key is configured;
  otherwise the request must carry one of them (``Authorization: Bearer`` or ``X-API-Key``).
- Acting (``/ui/api/actions/...``): always the admin token; without one configured, actions
  are disabled (403), as the server's ``/admin`` routes are.

The page itself (HTML, script, stylesheet) holds no data and loads without a token: it asks
for one when ``/ui/api`` answers 401 and keeps it in the tab's sessionStorage."""

from __future__ import annotations

import hmac

from flywheel.serving.auth import credential
from flywheel.serving.errors import Forbidden, Unauthorized

__all__ = ["check_admin", "check_read"]


def _matches(given: bytes, *secrets: bytes | None) -> bool:
    return any(s is not None and hmac.compare_digest(given, s) for s in secrets)


def check_read(
    headers: list[tuple[bytes, bytes]], admin_token: bytes | None, api_key: bytes | None
) -> None:
    if admin_token is None and api_key is None:
        return
    given = credential(headers)
    if given is None:
        raise Unauthorized(
            "The console needs a token: send 'Authorization: Bearer <FLYWHEEL_ADMIN_TOKEN or "
            "the API key>'."
        )
    if not _matches(given, admin_token, api_key):
        raise Forbidden("The token is neither the admin token nor the API key.")


def check_admin(headers: list[tuple[bytes, bytes]], admin_token: bytes | None) -> None:
    if admin_token is None:
        raise Forbidden("Console actions are disabled: set FLYWHEEL_ADMIN_TOKEN to enable them.")
    given = credential(headers)
    if given is None:
        raise Unauthorized("Actions need 'Authorization: Bearer <FLYWHEEL_ADMIN_TOKEN>'.")
    if not _matches(given, admin_token):
        raise Forbidden("Actions need the admin token; this one is not it.")
