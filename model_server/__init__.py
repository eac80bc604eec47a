"""The scripted model server: Anthropic's Messages API answered by directives in the prompt.

See docs/model-server.md for the directive syntax, the endpoints and what the Claude Code
CLI sends.
"""

from model_server.recording import fingerprint, is_main_call
from model_server.server import ModelServer, serve

__all__ = ["ModelServer", "fingerprint", "is_main_call", "serve"]
