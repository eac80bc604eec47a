"""Webhooks: the URL policy, the payloads and their delivery."""
