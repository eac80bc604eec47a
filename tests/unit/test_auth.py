from __future__ import annotations

import time

import jwt
import pytest

from orchestrator.auth.owner_tokens import AuthError, mint_token, verify_token
from orchestrator.settings import ConfigError, Settings, load_settings

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
        claims["exp"] = now - 120  # past the default 30 s leeway
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


def test_clock_skew_within_the_leeway_is_forgiven(hs256: Settings) -> None:
    now = int(time.time())
    for claims in (_claims(iat=now + 1), _claims(nbf=now + 20), _claims(exp=now - 20)):
        token = jwt.encode(claims, SECRET, algorithm="HS256")
        assert verify_token(hs256, token).owner == "alice"


def test_clock_skew_past_the_leeway_is_refused(hs256: Settings) -> None:
    token = jwt.encode(_claims(iat=int(time.time()) + 120), SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match="not valid yet"):
        verify_token(hs256, token)


def test_a_token_is_valid_until_its_exp_plus_the_leeway() -> None:
    settings = load_settings(env_file=None, jwt_secret=SECRET, jwt_leeway_seconds=7)
    claims = _claims()
    principal = verify_token(settings, jwt.encode(claims, SECRET, algorithm="HS256"))
    assert principal.valid_until == claims["exp"] + 7  # type: ignore[operator]


def test_minting_past_the_maximum_lifetime_is_refused() -> None:
    settings = load_settings(env_file=None, jwt_secret=SECRET, max_token_lifetime=3600)
    assert verify_token(settings, mint_token(settings, "alice", 3600)).owner == "alice"
    with pytest.raises(AuthError, match="CCQ_MAX_TOKEN_LIFETIME"):
        mint_token(settings, "alice", 3601)


def test_a_short_hs256_secret_is_refused_when_settings_load() -> None:
    with pytest.raises(ConfigError, match=r"CCQ_JWT_SECRET: .*at least 32 bytes"):
        load_settings(env_file=None, jwt_secret="x" * 31)
    assert load_settings(env_file=None, jwt_secret="x" * 32).jwt_secret is not None
