from __future__ import annotations

import time

import jwt
import pytest

from orchestrator.auth.owner_tokens import AuthError, mint_token, verify_token
from orchestrator.settings import Settings, load_settings

SECRET = "unit-test-secret-" + "y" * 32


@pytest.fixture
def hs256() -> Settings:
    return load_settings(env_file=None, jwt_secret=SECRET)


EXPIRED = object()  # stands for "an exp in the past", computed when the test runs


def _claims(**overrides: object) -> dict[str, object]:
    """Valid claims with overrides (None drops a claim); built when the test runs, since
    parametrize values are made at collection, which may be minutes earlier."""
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": "alice",
        "aud": "ccq",
        "iss": "ccq",
        "iat": now,
        "exp": now + 60,
    }
    claims.update(overrides)
    if claims["exp"] is EXPIRED:
        claims["exp"] = now - 10
    return {k: v for k, v in claims.items() if v is not None}


def test_a_minted_token_verifies_to_its_subject(hs256: Settings) -> None:
    assert verify_token(hs256, mint_token(hs256, "alice")).owner == "alice"


@pytest.mark.parametrize(
    ("overrides", "secret", "message"),
    [
        ({"exp": EXPIRED}, SECRET, "expired"),
        ({"aud": "someone-else"}, SECRET, "audience"),
        ({"iss": "evil"}, SECRET, "issuer"),
        ({"sub": None}, SECRET, "'sub'"),
        ({"exp": None}, SECRET, "'exp'"),
        ({}, "forged-secret-" + "z" * 32, "signature"),
        ({"sub": ""}, SECRET, "subject"),
    ],
)
def test_bad_tokens_are_refused_with_a_reason(
    hs256: Settings, overrides: dict[str, object], secret: str, message: str
) -> None:
    token = jwt.encode(_claims(**overrides), secret, algorithm="HS256")
    with pytest.raises(AuthError, match=message):
        verify_token(hs256, token)


def test_the_algorithm_is_pinned_not_taken_from_the_token(hs256: Settings) -> None:
    unsigned = jwt.encode(_claims(), key="", algorithm="none")
    with pytest.raises(AuthError):
        verify_token(hs256, unsigned)
    with pytest.raises(AuthError):
        verify_token(hs256, "not.a.token")


def test_without_a_secret_nothing_verifies() -> None:
    bare = load_settings(env_file=None, jwt_secret=None)
    with pytest.raises(AuthError, match="CCQ_JWT_SECRET"):
        verify_token(bare, "anything")


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_public_key_algorithms_verify_with_the_public_key_only(algorithm: str) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    private_key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if algorithm == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    public_pem = (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    settings = load_settings(env_file=None, jwt_algorithm=algorithm, jwt_public_key=public_pem)
    token = jwt.encode(_claims(), private_key, algorithm=algorithm)
    assert verify_token(settings, token).owner == "alice"
    # An HS256 token signed with the public key text must not pass (algorithm confusion).
    with pytest.raises(AuthError):
        verify_token(settings, jwt.encode(_claims(), SECRET, algorithm="HS256"))
