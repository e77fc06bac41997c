"""The ``jwk-token`` authenticator in a real server, with real keys and a JWKS on loopback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import RSAAlgorithm

from tests.conftest import RunningServer, run_config_check
from tests.jwt_support import AUDIENCE, ISSUER, JwksServer, SigningKey

MISSING = {
    "response": "Missing or invalid credentials provided by client",
    "cause": "No Authorization header found",
}


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return SigningKey.rsa("rsa-1")


@pytest.fixture(scope="module")
def ec_key() -> SigningKey:
    return SigningKey.ec("ec-1")


@pytest.fixture
def jwks(rsa_key: SigningKey, ec_key: SigningKey) -> Iterator[JwksServer]:
    server = JwksServer(keys=[rsa_key, ec_key]).start()
    yield server
    server.stop()


def jwk_settings(**settings: Any) -> dict[str, Any]:
    return {
        "authentication": {
            "module": "jwk-token",
            "jwk-token": {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "user_id_claim": "sub",
                "username_claim": "preferred_username",
                "roles_claim": "roles",
                "leeway_seconds": 30,
                **settings,
            },
        }
    }


@pytest.fixture
def server(server_factory: Callable[..., RunningServer], jwks: JwksServer) -> RunningServer:
    return server_factory(jwk_settings(jwks_url=jwks.url, jwks_min_refresh_seconds=0))


def ask(server: RunningServer, token: str | None, path: str = "/v1/query") -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.post(f"{server.url}{path}", json={"query": "hi"}, headers=headers, timeout=10)


def switch_feedback(server: RunningServer, token: str, status: bool) -> requests.Response:
    """``PUT /v1/feedback/status``, which only the service's admin role may do."""
    return requests.put(
        f"{server.url}/v1/feedback/status",
        json={"status": status},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def cause(response: requests.Response) -> str:
    assert response.status_code == 401, response.text
    detail = response.json()["detail"]
    assert detail["response"] == MISSING["response"]
    return str(detail["cause"])


def user_dir(server: RunningServer, user_id: str) -> Path:
    return server.root / "transcripts" / hashlib.sha256(user_id.encode()).hexdigest()


def test_valid_rsa_and_ec_tokens_identify_the_user(
    server: RunningServer, rsa_key: SigningKey, ec_key: SigningKey, jwks: JwksServer
) -> None:
    for key in (rsa_key, ec_key):
        response = ask(server, key.token(sub=f"user-{key.kid}"))
        assert response.status_code == 200, response.text
        assert (user_dir(server, f"user-{key.kid}") / response.json()["conversation_id"]).is_dir()
    streamed = ask(server, rsa_key.token(), "/v1/streaming_query")
    assert streamed.status_code == 200
    assert streamed.headers["Content-Type"] == "text/event-stream"
    assert jwks.fetches == 1  # cached between requests


def test_missing_expired_and_forged_tokens_are_401(
    server: RunningServer, rsa_key: SigningKey, tmp_path: Path
) -> None:
    missing = ask(server, None)
    assert missing.status_code == 401
    assert missing.json() == {"detail": MISSING}
    assert cause(ask(server, rsa_key.token(expires_in=-120))) == "Token has expired"
    # Within the leeway an expired token still passes: clocks drift.
    assert ask(server, rsa_key.token(expires_in=-10)).status_code == 200
    assert "audience" in cause(ask(server, rsa_key.token(aud="someone-else")))
    assert "issuer" in cause(ask(server, rsa_key.token(iss="https://evil.example")))
    assert "'exp' claim" in cause(ask(server, rsa_key.token(exp=None)))
    assert "no user id" in cause(ask(server, rsa_key.token(sub=None)))
    assert "no user id" in cause(ask(server, rsa_key.token(sub=" \t ")))
    # Times are JSON numbers (RFC 7519's NumericDate); a string of digits is not one.
    later = str(int(time.time()) + 300)
    assert "its 'exp' claim is not a number" in cause(ask(server, rsa_key.token(exp=later)))
    assert "its 'iat' claim is not a number" in cause(ask(server, rsa_key.token(iat="0")))
    assert "well-formed" in cause(ask(server, "not.a.jwt"))

    impostor = SigningKey.rsa("rsa-1")  # same key id, different key
    assert "signature" in cause(ask(server, impostor.token()))
    unknown = SigningKey.rsa("rsa-unknown")
    assert "'rsa-unknown' is not known" in cause(ask(server, unknown.token()))
    # What the client put in the header is quoted back cut short, however long it is.
    sprawling = SigningKey(f"k{'x' * 5000}", "RS256", unknown.private)
    answer = ask(server, sprawling.token())
    assert answer.status_code == 401 and len(answer.content) < 500, len(answer.content)
    assert "'kxxxxxxxx" in cause(answer) and "…" in cause(answer)

    # Algorithm tricks: unsigned tokens, and the public key used as an HMAC secret.
    claims = jwt.decode(rsa_key.token(), options={"verify_signature": False})
    unsigned = _unsigned(claims)
    assert "'none' is not accepted" in cause(ask(server, unsigned))
    public_pem = rsa_key.public_pem()
    forged = _hs256(claims, public_pem, "rsa-1")
    assert "'HS256' is not accepted" in cause(ask(server, forged))
    # Only the token within the leeway got an answer.
    assert len(list((server.root / "transcripts").rglob("*.json"))) == 1


def test_roles_claim_grants_admin_for_the_feedback_switch(
    server: RunningServer, rsa_key: SigningKey
) -> None:
    assert switch_feedback(server, rsa_key.token(roles=["viewer"]), False).status_code == 403
    assert switch_feedback(server, rsa_key.token(), False).status_code == 403
    allowed = switch_feedback(
        server, rsa_key.token(sub="root-id", roles=["viewer", "admin"]), False
    )
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["status"]["updated_by"] == "root-id"


def test_a_new_signing_key_is_fetched_when_a_token_names_it(
    server: RunningServer, jwks: JwksServer, rsa_key: SigningKey
) -> None:
    assert ask(server, rsa_key.token()).status_code == 200
    assert jwks.fetches == 1
    rotated = SigningKey.ec("ec-2")
    jwks.keys.append(rotated)
    assert ask(server, rotated.token()).status_code == 200
    assert jwks.fetches == 2


def test_unknown_key_ids_do_not_flood_the_identity_provider(
    server_factory: Callable[..., RunningServer], jwks: JwksServer, rsa_key: SigningKey
) -> None:
    server = server_factory(jwk_settings(jwks_url=jwks.url, jwks_min_refresh_seconds=60))
    assert ask(server, rsa_key.token()).status_code == 200
    for index in range(5):
        ask(server, SigningKey(f"made-up-{index}", "RS256", rsa_key.private).token())
    assert jwks.fetches == 1


def test_local_pem_file_and_configurable_claims(
    server_factory: Callable[..., RunningServer], ec_key: SigningKey, tmp_path: Path
) -> None:
    pem = tmp_path / "idp.pem"
    pem.write_bytes(ec_key.public_pem())
    server = server_factory(
        jwk_settings(
            jwks_file=str(pem),
            user_id_claim="uid",
            username_claim="name",
            roles_claim="realm_access.roles",
            admin_roles=["collector-admin"],
        )
    )
    token = ec_key.token(with_kid=False, uid="u-42", realm_access={"roles": ["collector-admin"]})
    response = ask(server, token)
    assert response.status_code == 200, response.text
    assert user_dir(server, "u-42").is_dir()
    toggled = switch_feedback(server, token, False)
    assert toggled.status_code == 200, toggled.text
    # With admin_roles set, they alone grant admin: an identity provider's own "admin" role
    # (a realm administrator's, say) is no say over this service.
    realm_admin = ec_key.token(with_kid=False, uid="u-44", realm_access={"roles": ["admin"]})
    refused = switch_feedback(server, realm_admin, True)
    assert refused.status_code == 403, refused.text
    assert "no user id in claim 'uid'" in cause(ask(server, ec_key.token(with_kid=False)))

    # The file is read again when it changes: the old key stops working.
    replacement = SigningKey.rsa("new")
    staging = tmp_path / "idp.new"
    staging.write_text(json.dumps({"keys": [replacement.jwk()]}))
    os.replace(staging, pem)
    assert ask(server, replacement.token(uid="u-43")).status_code == 200
    assert ask(server, token).status_code == 401


def _forged(algorithm: str, private: Any, kid: str | None) -> str:
    """A token signed with ``private`` under ``algorithm``, whatever key ``kid`` names."""
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "iat": now, "exp": now + 300}
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims, private, algorithm=algorithm, headers=headers)


def test_a_token_whose_algorithm_does_not_suit_the_key_is_401_not_500(
    server_factory: Callable[..., RunningServer],
    rsa_key: SigningKey,
    ec_key: SigningKey,
    tmp_path: Path,
) -> None:
    # Many identity providers publish keys without "alg", and a PEM file never names one:
    # the key's type and curve are all there is to match a token's algorithm against.
    bare = [{k: v for k, v in key.jwk().items() if k != "alg"} for key in (rsa_key, ec_key)]
    jwks = JwksServer(body=json.dumps({"keys": bare}).encode()).start()
    pem = tmp_path / "idp.pem"
    pem.write_bytes(rsa_key.public_pem() + ec_key.public_pem())
    p384 = ec.generate_private_key(ec.SECP384R1())
    try:
        for settings in ({"jwks_url": jwks.url}, {"jwks_file": str(pem)}):
            server = server_factory(jwk_settings(**settings), name=next(iter(settings)))
            for key in (rsa_key, ec_key):
                for with_kid in (True, False):
                    response = ask(server, key.token(with_kid=with_kid))
                    assert response.status_code == 200, (settings, key.kid, response.text)
            assert ask(server, _forged("PS256", rsa_key.private, "rsa-1")).status_code == 200
            for token in (
                _forged("RS256", SigningKey.rsa("x").private, "ec-1"),
                _forged("ES256", ec.generate_private_key(ec.SECP256R1()), "rsa-1"),
                _forged("ES384", p384, "ec-1"),
                _forged("ES384", p384, None),
                _forged("ES512", ec.generate_private_key(ec.SECP521R1()), None),
                _forged("EdDSA", ed25519.Ed25519PrivateKey.generate(), None),
            ):
                cause(ask(server, token))
            assert "Traceback" not in server.log()
    finally:
        jwks.stop()


def test_identity_provider_down_is_503_not_401(
    server_factory: Callable[..., RunningServer], rsa_key: SigningKey
) -> None:
    down = JwksServer().start()
    url = down.url
    down.stop()
    server = server_factory(jwk_settings(jwks_url=url, jwks_timeout_seconds=1))
    response = ask(server, rsa_key.token())
    assert response.status_code == 503, response.text
    assert response.json()["detail"]["response"] == "Cannot verify credentials right now"
    assert "Traceback" not in server.log()


def test_a_failing_identity_provider_is_not_asked_again_for_every_request(
    server_factory: Callable[..., RunningServer], rsa_key: SigningKey
) -> None:
    failing = JwksServer(keys=[rsa_key], status=500).start()
    try:
        server = server_factory(jwk_settings(jwks_url=failing.url, jwks_min_refresh_seconds=2))
        for _ in range(10):
            assert ask(server, rsa_key.token()).status_code == 503
        assert failing.fetches == 1
        failing.status = 200
        time.sleep(2.2)
        assert ask(server, rsa_key.token()).status_code == 200
        assert failing.fetches == 2
    finally:
        failing.stop()
    assert server.log().count("cannot fetch signing keys") == 1


def test_a_jwks_url_that_trickles_its_answer_is_given_up_on_within_the_timeout(
    server_factory: Callable[..., RunningServer], rsa_key: SigningKey
) -> None:
    # One byte at a time, each well within the timeout: the whole answer would take minutes.
    trickling = JwksServer(keys=[rsa_key], byte_interval=0.2).start()
    try:
        server = server_factory(jwk_settings(jwks_url=trickling.url, jwks_timeout_seconds=1))
        started = time.monotonic()
        response = ask(server, rsa_key.token())
        assert response.status_code == 503, response.text
        assert time.monotonic() - started < 5
    finally:
        trickling.stop()
    assert "it did not send the key set within 1 s" in server.log()


def test_keys_come_only_from_the_configured_url_not_from_where_it_redirects(
    server_factory: Callable[..., RunningServer], rsa_key: SigningKey
) -> None:
    # A redirect may lead anywhere, from https to plain http included, where anyone on
    # the way can put in keys of their own.
    mallory = SigningKey.rsa("mallory")
    elsewhere = JwksServer(keys=[mallory]).start()
    redirecting = JwksServer(keys=[rsa_key], redirect_to=elsewhere.url + "?sig=s3cret").start()
    try:
        server = server_factory(jwk_settings(jwks_url=redirecting.url))
        response = ask(server, mallory.token())
        assert response.status_code == 503, response.text
        assert elsewhere.fetches == 0
    finally:
        redirecting.stop()
        elsewhere.stop()
    log = server.log()
    assert "HTTP 302: redirects are not followed; configure the URL it points to" in log
    assert "s3cret" not in log


def test_tokens_with_cached_keys_do_not_wait_for_a_refresh_caused_by_another(
    server_factory: Callable[..., RunningServer], jwks: JwksServer, rsa_key: SigningKey
) -> None:
    server = server_factory(jwk_settings(jwks_url=jwks.url, jwks_min_refresh_seconds=1))
    assert ask(server, rsa_key.token()).status_code == 200
    time.sleep(1.1)
    jwks.delay = 3  # the provider is slow now; anyone may name a key id it never issued
    made_up = SigningKey("made-up", "RS256", rsa_key.private).token()
    with ThreadPoolExecutor(1) as pool:
        refreshing = pool.submit(ask, server, made_up)
        time.sleep(0.5)
        started = time.monotonic()
        assert ask(server, rsa_key.token()).status_code == 200
        assert time.monotonic() - started < 1.5
        assert "'made-up' is not known" in cause(refreshing.result())
    assert jwks.fetches == 2


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"issuer": ISSUER},
            "authentication.jwk-token: give exactly one of jwks_url and jwks_file",
        ),
        (
            {"jwks_url": "http://a", "jwks_file": "/b"},
            "authentication.jwk-token: give exactly one of jwks_url and jwks_file",
        ),
        (
            {"jwks_file": "/nonexistent/jwks.json"},
            "authentication.jwk-token.jwks_file: cannot read",
        ),
        (
            {"jwks_url": "http://a", "algorithms": ["HS256"]},
            "authentication.jwk-token.algorithms.0",
        ),
        ({"jwks_url": "http://a", "leeway": 3}, "authentication.jwk-token.leeway: unknown key"),
        (
            {"jwks_url": "http://a", "jwks_timeout_seconds": 1.0e300},
            "authentication.jwk-token.jwks_timeout_seconds",
        ),
        (
            {"jwks_url": "ftp://idp:pa55word@example.com/jwks"},
            "authentication.jwk-token.jwks_url: not an http:// or https:// URL",
        ),
    ],
)
def test_bad_settings_fail_config_check_naming_the_key(
    tmp_path: Path, settings: dict[str, Any], message: str
) -> None:
    result = run_config_check(
        tmp_path, {"authentication": {"module": "jwk-token", "jwk-token": settings}}
    )
    assert result.returncode == 2, result.stdout
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "pa55word" not in result.stderr


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"[" * 100_000, "JSON nested too deeply"),
        (b"-----BEGIN", "holds no public key or certificate"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "PEM block 1"),
        (b'{"keys": []}', "holds no usable signature keys"),
        (b" " * (1024 * 1024 + 1), "is larger than 1048576 bytes"),
    ],
    ids=["deep-json", "begin-only", "bad-pem", "empty-jwks", "too-large"],
)
def test_a_bad_jwks_file_fails_config_check_naming_the_key(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    keys = tmp_path / "keys.pem"
    keys.write_bytes(content)
    result = run_config_check(
        tmp_path, {"authentication": {"module": "jwk-token", "jwk-token": {"jwks_file": str(keys)}}}
    )
    assert result.returncode == 2, result.stdout
    assert "authentication.jwk-token.jwks_file: " in result.stderr
    assert problem in result.stderr
    assert "Traceback" not in result.stderr


def test_an_endless_jwks_file_fails_config_check_instead_of_filling_memory(
    tmp_path: Path,
) -> None:
    result = run_config_check(
        tmp_path,
        {"authentication": {"module": "jwk-token", "jwk-token": {"jwks_file": "/dev/zero"}}},
    )
    assert result.returncode == 2, result.stdout
    assert "authentication.jwk-token.jwks_file: /dev/zero is larger than" in result.stderr


@pytest.mark.parametrize(
    "body", [b"[" * 100_000, b"{" * 2 * 1024 * 1024], ids=["deep-json", "too-large"]
)
def test_a_jwks_url_serving_junk_is_503_not_500(
    server_factory: Callable[..., RunningServer], rsa_key: SigningKey, body: bytes
) -> None:
    junk = JwksServer(body=body).start()
    try:
        server = server_factory(jwk_settings(jwks_url=junk.url))
        response = ask(server, rsa_key.token())
    finally:
        junk.stop()
    assert response.status_code == 503, response.text
    assert "cannot fetch signing keys" in server.log()
    assert "Traceback" not in server.log()


def test_a_private_key_published_in_the_jwks_is_never_used(
    server_factory: Callable[..., RunningServer], rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    # Anyone who can read the key set could sign with a private key published there.
    published = json.loads(RSAAlgorithm.to_jwk(rsa_key.private))
    published.update({"kid": "leaked", "use": "sig", "alg": "RS256"})
    jwks = JwksServer(body=json.dumps({"keys": [published, ec_key.jwk()]}).encode()).start()
    try:
        server = server_factory(jwk_settings(jwks_url=jwks.url))
        forged = SigningKey("leaked", "RS256", rsa_key.private).token()
        assert "'leaked' is not known" in cause(ask(server, forged))
        assert ask(server, ec_key.token()).status_code == 200
    finally:
        jwks.stop()
    log = server.log()
    assert "jwk-token: skipping key leaked: it holds a private key" in log
    assert "Traceback" not in log


def test_the_log_masks_the_password_and_query_of_the_jwks_url(
    server_factory: Callable[..., RunningServer], rsa_key: SigningKey
) -> None:
    down = JwksServer().start()
    url = down.url.replace("http://", "http://idp:pa55word@") + "?token=s3cret"
    down.stop()
    server = server_factory(jwk_settings(jwks_url=url, jwks_timeout_seconds=1))
    assert ask(server, rsa_key.token()).status_code == 503
    log = server.log()
    assert "cannot fetch signing keys from http://idp:********@127.0.0.1:" in log
    assert "pa55word" not in log
    assert "s3cret" not in log


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(claims: dict[str, Any]) -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "rsa-1"}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}."


def _hs256(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(signature)}"
