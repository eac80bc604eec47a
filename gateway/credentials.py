"""Who a gateway request speaks for: the run whose session token it carries."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RunCredential:
    """A verified session token: one run of one session, for one owner.

    The token itself is kept (tools pass it on to ccq's API, which checks its scope
    again) but never shown in a repr or a log.
    """

    token: str = field(repr=False)
    owner: str
    session_id: uuid.UUID
    run_id: uuid.UUID


# Where the gateway's authentication puts the credential: ``scope["state"][STATE_KEY]``,
# so ``request.state.credential`` in any handler (the MCP tools included).
STATE_KEY = "credential"
