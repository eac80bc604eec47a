"""JWT bearer tokens: validated for every request, minted only by the dev helper.

The algorithm is pinned by settings (never taken from the token header), and ``exp``,
``aud``, ``iss`` and ``sub`` are required. ``sub`` is the owner of everything a request
creates or reads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from orchestrator.settings import Settings

REQUIRED_CLAIMS = ("exp", "iat", "aud", "iss", "sub")
MAX_SUBJECT_LENGTH = 200


class AuthError(Exception):
    """The token is missing, malformed, expired, forged or for another audience."""


@dataclass(frozen=True)
class Principal:
    owner: str
    # When the token stops being accepted (its exp plus the leeway), as a Unix time:
    # an open tail is closed then.
    valid_until: float


def _verification_key(settings: Settings) -> str:
    if settings.jwt_algorithm == "HS256":
        if settings.jwt_secret is None:
            raise AuthError("the server has no CCQ_JWT_SECRET configured")
        return settings.jwt_secret.get_secret_value()
    if settings.jwt_public_key is None:
        raise AuthError("the server has no CCQ_JWT_PUBLIC_KEY configured")
    return settings.jwt_public_key


def verify_token(settings: Settings, token: str) -> Principal:
    """Validate a bearer token and return who it speaks for.

    Raises:
        AuthError: with a message safe to show the client (no key material).
    """
    try:
        claims = jwt.decode(
            token,
            _verification_key(settings),
            algorithms=[settings.jwt_algorithm],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            leeway=settings.jwt_leeway_seconds,
            options={"require": list(REQUIRED_CLAIMS)},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.ImmatureSignatureError:
        raise AuthError("token is not valid yet (iat or nbf in the future)") from None
    except jwt.InvalidAudienceError:
        raise AuthError("token has the wrong audience") from None
    except jwt.InvalidIssuerError:
        raise AuthError("token has the wrong issuer") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(f"token lacks the {exc.claim!r} claim") from None
    except jwt.InvalidTokenError:
        raise AuthError("token is malformed or its signature is invalid") from None
    subject = claims["sub"]
    if not isinstance(subject, str) or not subject or len(subject) > MAX_SUBJECT_LENGTH:
        raise AuthError("token subject must be a non-empty string of at most 200 characters")
    return Principal(owner=subject, valid_until=claims["exp"] + settings.jwt_leeway_seconds)


def mint_token(settings: Settings, subject: str, ttl_seconds: int = 24 * 3600) -> str:
    """Sign an HS256 token the running stack accepts (development and tests).

    Raises:
        AuthError: no secret, a bad subject, or ``ttl_seconds`` past CCQ_MAX_TOKEN_LIFETIME.
    """
    if settings.jwt_secret is None:
        raise AuthError("CCQ_JWT_SECRET is not set; `make up` generates one in .ccq/ccq.env")
    if not subject or len(subject) > MAX_SUBJECT_LENGTH:
        raise AuthError("subject must be a non-empty string of at most 200 characters")
    if not 0 < ttl_seconds <= settings.max_token_lifetime:
        raise AuthError(
            f"a token's lifetime must be 1 to {settings.max_token_lifetime} s "
            "(CCQ_MAX_TOKEN_LIFETIME)"
        )
    now = int(time.time())
    claims = {
        "sub": subject,
        "aud": settings.jwt_audience,
        "iss": settings.jwt_issuer,
        "iat": now,
        "exp": now + ttl_seconds,
    }
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")
