"""Schemathesis hooks for the API fuzz run (loaded through ``SCHEMATHESIS_HOOKS``).

A fuzzed ``notify_url`` naming a random host would make the API resolve it, sending DNS
queries off this machine. Each one is replaced by a URL the outbound policy judges
without any lookup (a literal loopback address, refused with a 400); the policy itself
is tested in tests/integration/test_outbound_policy.py.
"""

from __future__ import annotations

from typing import Any

import schemathesis

NO_LOOKUP_URL = "http://127.0.0.1:9/"


def _without_lookups(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: NO_LOOKUP_URL if k == "notify_url" else _without_lookups(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_without_lookups(v) for v in value]
    return value


@schemathesis.hook
def map_body(context: schemathesis.HookContext, body: Any) -> Any:
    return _without_lookups(body)


@schemathesis.hook
def map_query(context: schemathesis.HookContext, query: Any) -> Any:
    return _without_lookups(query)
