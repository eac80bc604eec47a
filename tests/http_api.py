"""The real API over HTTP (``/api/v1``) as one token sees it, for tests of a running stack."""

from __future__ import annotations

from typing import Any

import requests

from tests.processes import ApiProcess


class HttpApi:
    def __init__(self, server: ApiProcess, token: str) -> None:
        self.server = server
        self.token = token
        self.url = f"{server.url}/api/v1"
        self.headers = {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        """The JSON reply, after checking the status (the reply's start in the message)."""
        response = requests.request(
            method, self.url + path, json=body, headers=self.headers, timeout=60
        )
        assert response.status_code == status, f"{method} {path}: {response.text[:2000]}"
        return response.json()

    def get(self, path: str, status: int = 200) -> Any:
        return self.call("GET", path, status=status)

    def post(self, path: str, body: Any, status: int) -> Any:
        return self.call("POST", path, body, status)
