"""One root for everything the container runtime raises, so no caller sees docker-py.

docker-py raises a hierarchy of its own (``NotFound``, ``APIError``, ``DockerException``)
and, under it, ``requests``' errors when the engine's socket misbehaves. The runtime
translates them where it calls the engine (:func:`~.client.engine_errors`): a caller
catches :class:`ContainerError`, or one of its kinds, and knows nothing of the library.
"""

from __future__ import annotations


class ContainerError(Exception):
    """Root of every error raised by the container runtime (the engine refused a call)."""


class EngineUnavailable(ContainerError):
    """The Docker engine cannot be reached, or did not answer in time."""


class ContainerMissing(ContainerError):
    """The container is gone (removed meanwhile, or never made): docker-py's ``NotFound``."""


class ImageMissing(ContainerError):
    """An image is not on this engine (``make image`` builds the worker image)."""


class NetworkError(ContainerError):
    """The session network cannot be made, or the host's address on it cannot be found."""
