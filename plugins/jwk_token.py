"""The ``jwk-token`` authenticator: a JWT from an identity provider, checked with PyJWT.

The signing keys come from the provider's JWKS URL (cached; fetched again when a token names
a key id that is not cached, or after a failed fetch, at most every
``jwks_min_refresh_seconds``, so neither a flood of made-up key ids nor a flood of requests
while the provider is down turns into a flood of fetches) or from a local JWKS or PEM file (read again
when it changes). Only asymmetric algorithms are accepted; ``exp`` is required, ``iss`` and
``aud`` are checked when configured, all with a small leeway for clock skew. Which claims
carry the user id, the user name and the roles is configurable.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import requests
import urllib3.exceptions

if TYPE_CHECKING:
    import jwt

from lightspeed_collector import hookimpl
from lightspeed_collector.types import (
    Authenticator,
    AuthRequest,
    CollectorError,
    Config,
    ConfigError,
    ConfigSchema,
    Identity,
    Unauthorized,
    innermost_cause,
    masked_url,
    read_bounded,
)

log = logging.getLogger(__name__)

MODULE = "jwk-token"
# A key set is a few kilobytes; the limit keeps a wrong path (/dev/zero, a log) or a
# misbehaving server from filling memory.
MAX_KEYS_BYTES = 1024 * 1024
ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_CURVE_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
DEFAULTS: dict[str, Any] = {
    "user_id_claim": "sub",
    "username_claim": "preferred_username",
    "roles_claim": "roles",
    "admin_roles": ["admin"],
    "leeway_seconds": 30,
    "jwks_cache_seconds": 3600,
    "jwks_timeout_seconds": 5,
    "jwks_min_refresh_seconds": 10,
}

SETTINGS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "jwks_url": {
            "type": "string",
            "pattern": "^https?://",
            "description": "The identity provider's JWKS document.",
            # The URL may carry credentials: it is not quoted.
            "x-messages": {"pattern": "not an http:// or https:// URL"},
        },
        "jwks_file": {
            "type": "string",
            "minLength": 1,
            "description": "A local JWKS (JSON) or PEM public key/certificate file.",
        },
        "issuer": {
            "type": "string",
            "minLength": 1,
            "description": "The `iss` every token must carry; unchecked when absent.",
        },
        "audience": {
            "description": "Accepted `aud` value(s); a token must carry one of them. "
            "Unchecked when absent.",
            "anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
            ],
        },
        "algorithms": {
            "type": "array",
            "items": {"enum": list(ASYMMETRIC_ALGORITHMS)},
            "minItems": 1,
            "default": list(ASYMMETRIC_ALGORITHMS),
            "description": "Accepted signing algorithms (asymmetric only).",
        },
        "user_id_claim": {
            "type": "string",
            "minLength": 1,
            "default": DEFAULTS["user_id_claim"],
            "description": "Claim holding the user id; a dotted path reaches into nested claims.",
        },
        "username_claim": {
            "type": "string",
            "minLength": 1,
            "default": DEFAULTS["username_claim"],
            "description": "Claim holding the user name (the user id when absent).",
        },
        "roles_claim": {
            "type": "string",
            "minLength": 1,
            "default": DEFAULTS["roles_claim"],
            "description": "Claim holding the roles: a list, or a space-separated string; "
            "e.g. realm_access.roles for Keycloak.",
        },
        "admin_roles": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "default": DEFAULTS["admin_roles"],
            "description": "Roles from the token that grant the service's `admin` role; nothing else does.",
        },
        "leeway_seconds": {
            "type": "number",
            "minimum": 0,
            "maximum": 600,
            "default": DEFAULTS["leeway_seconds"],
            "description": "Clock skew allowed when checking exp, nbf and iat.",
        },
        "jwks_cache_seconds": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 31_536_000,
            "default": DEFAULTS["jwks_cache_seconds"],
            "description": "How long fetched keys are used before the JWKS is fetched again.",
        },
        "jwks_timeout_seconds": {
            "type": "number",
            "exclusiveMinimum": 0,
            # A socket timeout must fit the system's clock type: 1e300 would overflow on
            # every fetch. Ten minutes is already far beyond any identity provider.
            "maximum": 600,
            "default": DEFAULTS["jwks_timeout_seconds"],
            "description": "Time allowed for fetching the JWKS, from connecting to its last byte.",
        },
        "jwks_min_refresh_seconds": {
            "type": "number",
            "minimum": 0,
            "maximum": 86_400,
            "default": DEFAULTS["jwks_min_refresh_seconds"],
            "description": "Least time between two fetches caused by tokens naming an unknown "
            "key, or after a fetch that failed.",
        },
    },
    "oneOf": [{"required": ["jwks_url"]}, {"required": ["jwks_file"]}],
    "x-messages": {"oneOf": "give exactly one of jwks_url and jwks_file"},
}


class SigningKeysUnavailable(CollectorError):
    """The identity provider's keys cannot be fetched: the service's problem, not the
    client's, so not a 401 that would make a client throw away a good token."""

    status = 503
    response = "Cannot verify credentials right now"


@dataclass(frozen=True)
class SigningKey:
    key_id: str | None
    key: Any
    algorithms: frozenset[str]
    """The algorithms the key can verify: those its type (and curve) allow, narrowed to its
    JWK's ``alg`` when it names one. PyJWT given a key of the wrong type for a token's
    algorithm fails with a ``TypeError``, not a verdict, so tokens never reach such a key."""


class KeySource(Protocol):
    def keys(self, key_id: str | None) -> Sequence[SigningKey]: ...


class JwksUrl:
    def __init__(
        self, url: str, timeout: float, cache_seconds: float, min_refresh_seconds: float
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self.min_refresh_seconds = min_refresh_seconds
        self._keys: tuple[SigningKey, ...] = ()
        self._fetched_at: float | None = None
        """When the keys were last fetched successfully."""
        self._attempted_at: float | None = None
        """When a fetch was last tried, whatever came of it."""
        self._refresh_lock = threading.Lock()
        """Held for a fetch, so that there is one at a time."""

    def keys(self, key_id: str | None) -> Sequence[SigningKey]:
        """The cached keys, fetched first when needed. Only a request that needs a fetch, or
        has no keys to use yet, waits for one: a fetch caused by somebody's unknown key id
        or by the cache expiring must not hold up tokens the cached keys can check, however
        slowly the identity provider answers."""
        if not self._keys or self._needs_refresh(key_id, time.monotonic()):
            with self._refresh_lock:
                # The fetch this request waited for may have been the one it needed.
                now = time.monotonic()
                if self._needs_refresh(key_id, now):
                    self._refresh(now)
        keys = self._keys
        if not keys:
            raise SigningKeysUnavailable(
                "The identity provider's signing keys cannot be fetched; try again later"
            )
        return keys

    def _needs_refresh(self, key_id: str | None, now: float) -> bool:
        """Whether to fetch the keys now. Never twice within ``min_refresh_seconds``, not
        even while none could be fetched yet: every request would otherwise ask a failing
        identity provider again, and wait for it."""
        if self._attempted_at is not None and now - self._attempted_at < self.min_refresh_seconds:
            return False
        if self._fetched_at is None or now - self._fetched_at >= self.cache_seconds:
            return True
        return key_id is not None and all(k.key_id != key_id for k in self._keys)

    def _refresh(self, now: float) -> None:
        import jwt

        where = masked_url(self.url)
        self._attempted_at = now
        try:
            keys = _keys_from_jwks(_json_document(self._fetch()))
        except (
            requests.RequestException,
            urllib3.exceptions.HTTPError,
            OSError,
            ValueError,
            jwt.PyJWTError,
        ) as exc:
            reason = _reason(exc)
            if self._keys:
                log.warning("jwk-token: cannot refresh %s (%s); using cached keys", where, reason)
            else:
                log.error("jwk-token: cannot fetch signing keys from %s: %s", where, reason)
            return
        log.info("jwk-token: fetched %d signing keys from %s", len(keys), where)
        self._keys = keys
        self._fetched_at = now

    def _fetch(self) -> bytes:
        """The key set's bytes, within ``timeout`` seconds in all. The timeout requests
        applies bounds each read, so a server sending a byte now and then would otherwise
        hold the fetch, and every request waiting for keys, for as long as it likes."""
        deadline = time.monotonic() + self.timeout
        # Keys are trusted for where they come from: a redirect could lead to any server,
        # from https to plain http included, so only the configured URL is asked.
        with requests.get(
            self.url,
            timeout=self.timeout,
            headers={"Accept": "application/json"},
            stream=True,
            allow_redirects=False,
        ) as response:
            if response.is_redirect:
                raise ValueError(
                    f"HTTP {response.status_code}: redirects are not followed; configure the "
                    f"URL it points to ({masked_url(response.headers['location'])})"
                )
            if response.status_code >= 300:
                raise ValueError(f"HTTP {response.status_code}")
            data = bytearray()
            # read1 returns what one read brings, where iter_content would wait for a full
            # block, so the deadline is looked at as the bytes come in.
            for block in iter(lambda: response.raw.read1(64 * 1024, decode_content=True), b""):
                data += block
                if len(data) > MAX_KEYS_BYTES:
                    raise ValueError(f"the answer is larger than {MAX_KEYS_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise ValueError(f"it did not send the key set within {self.timeout:g} s")
            return bytes(data)


class KeyFile:
    """A JWKS or PEM file, read again whenever it changes so keys rotate without a restart."""

    def __init__(self, path: Path) -> None:
        import jwt

        self.path = path
        self._lock = threading.Lock()
        try:
            self._signature = _signature(path)
            self._keys = _keys_from_file(path)
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            raise ConfigError(f"authentication.{MODULE}.jwks_file", _describe(exc)) from None

    def keys(self, key_id: str | None) -> Sequence[SigningKey]:
        import jwt

        try:
            signature = _signature(self.path)
        except OSError:
            return self._keys
        with self._lock:
            if signature != self._signature:
                self._signature = signature
                try:
                    self._keys = _keys_from_file(self.path)
                    log.info("jwk-token: loaded %d keys from %s", len(self._keys), self.path)
                except (OSError, ValueError, jwt.PyJWTError) as exc:
                    log.error(
                        "jwk-token: %s: %s; keeping the keys loaded before",
                        self.path,
                        _describe(exc),
                    )
            return self._keys


class NoKeys:
    """Stands in while another authenticator is selected; never accepts anything."""

    def keys(self, key_id: str | None) -> Sequence[SigningKey]:
        raise Unauthorized("The jwk-token authenticator is not configured")


class JwkTokenAuthenticator:
    name = MODULE

    def __init__(self, source: KeySource, settings: Mapping[str, Any]) -> None:
        options = {**DEFAULTS, **settings}
        self._source = source
        self._issuer: str | None = options.get("issuer")
        audience = options.get("audience")
        self._audience: list[str] | None = [audience] if isinstance(audience, str) else audience
        self._algorithms: list[str] = list(options.get("algorithms", ASYMMETRIC_ALGORITHMS))
        self._leeway = float(options["leeway_seconds"])
        self._user_id_claim: str = options["user_id_claim"]
        self._username_claim: str = options["username_claim"]
        self._roles_claim: str = options["roles_claim"]
        self._admin_roles = frozenset(options["admin_roles"])

    def authenticate(self, request: AuthRequest) -> Identity:
        claims = self._verified_claims(request.bearer_token())
        return self._identity(claims)

    def _verified_claims(self, token: str) -> Mapping[str, Any]:
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("Invalid token: it is not a well-formed JWT") from None
        algorithm = header.get("alg")
        if algorithm not in self._algorithms:
            raise Unauthorized(
                f"Invalid token: signing algorithm '{_quoted(algorithm)}' is not accepted"
            )
        key_id = header.get("kid")
        key_id = key_id if isinstance(key_id, str) else None
        candidates = [
            key
            for key in self._source.keys(key_id)
            if (key_id is None or key.key_id in (key_id, None)) and algorithm in key.algorithms
        ]
        if not candidates:
            if key_id is not None:
                raise Unauthorized(f"Invalid token: signing key '{_quoted(key_id)}' is not known")
            raise Unauthorized("Invalid token: no signing key fits it")
        for candidate in candidates:
            try:
                claims: Mapping[str, Any] = jwt.decode(
                    token,
                    candidate.key,
                    algorithms=[algorithm],
                    audience=self._audience,
                    issuer=self._issuer,
                    leeway=self._leeway,
                    options={
                        "require": ["exp"],
                        "verify_aud": self._audience is not None,
                    },
                )
                _check_times(claims)
                return claims
            except (jwt.InvalidSignatureError, jwt.InvalidKeyError):
                continue
            except jwt.PyJWTError as exc:
                raise Unauthorized(_token_problem(exc)) from None
        raise Unauthorized("Invalid token: signature verification failed")

    def _identity(self, claims: Mapping[str, Any]) -> Identity:
        user_id = _claim(claims, self._user_id_claim)
        if (
            not isinstance(user_id, str | int)
            or isinstance(user_id, bool)
            or str(user_id).strip() == ""
        ):
            raise Unauthorized(f"Invalid token: no user id in claim '{self._user_id_claim}'")
        username = _claim(claims, self._username_claim)
        roles = _roles(_claim(claims, self._roles_claim))
        # admin_roles alone decide: an identity provider's own "admin" role (a realm
        # administrator's, say) grants nothing here unless it is listed.
        granted = bool(roles & self._admin_roles)
        roles.discard("admin")
        if granted:
            roles.add("admin")
        return Identity(
            user_id=str(user_id),
            username=username if isinstance(username, str) and username else str(user_id),
            roles=frozenset(roles),
        )


def _check_times(claims: Mapping[str, Any]) -> None:
    """``exp``, ``nbf`` and ``iat`` must be JSON numbers (RFC 7519's NumericDate). PyJWT
    also takes a string of digits for some of them, and a token whose issuer wrote its
    times as text is malformed: better refused than read one way here and another there."""
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise Unauthorized(f"Invalid token: its '{name}' claim is not a number")


def _quoted(value: Any) -> str:
    """A token header's value fit to quote back in a message: the client chose it, so it is
    cut short (a key id of a hundred kilobytes would otherwise come back whole)."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, dict | list):
        text = "an object" if isinstance(value, dict) else "a list"
    else:
        text = json.dumps(value)
    return text if len(text) <= _QUOTED_CHARACTERS else f"{text[:_QUOTED_CHARACTERS]}…"


_QUOTED_CHARACTERS = 64


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by name, or by dotted path into nested claims (``realm_access.roles``)."""
    if path in claims:
        return claims[path]
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _roles(value: Any) -> set[str]:
    if isinstance(value, str):
        return set(value.split())
    if isinstance(value, list):
        return {item for item in value if isinstance(item, str) and item}
    return set()


def _token_problem(exc: jwt.PyJWTError) -> str:
    import jwt

    if isinstance(exc, jwt.ExpiredSignatureError):
        return "Token has expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "Token is not valid yet"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "Invalid token: its audience is not accepted"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "Invalid token: its issuer is not accepted"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"Invalid token: it has no '{exc.claim}' claim"
    if isinstance(exc, jwt.DecodeError):
        return "Invalid token: it is not a well-formed JWT"
    return f"Invalid token: {exc}"


def _signature(path: Path) -> tuple[int, int, int]:
    stat = os.stat(path)
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def _keys_from_jwks(document: Any) -> tuple[SigningKey, ...]:
    """The usable signature keys of a JWKS (or of a single JWK)."""
    import jwt

    if isinstance(document, Mapping) and "keys" not in document and "kty" in document:
        document = {"keys": [document]}
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document (an object with a 'keys' list)")
    keys: list[SigningKey] = []
    for item in document["keys"]:
        if not isinstance(item, Mapping) or item.get("use", "sig") != "sig":
            continue
        if item.get("kty") == "oct":
            continue  # shared secrets have no place in a key set anyone may read
        if "d" in item:
            # The private part of an RSA, EC or OKP key: whoever read the key set can sign
            # with it, so nothing it verifies proves anything.
            log.warning(
                "jwk-token: skipping key %s: it holds a private key, which a key set must "
                "never publish",
                item.get("kid"),
            )
            continue
        try:
            jwk = jwt.PyJWK(dict(item))
        except jwt.PyJWTError as exc:
            log.warning("jwk-token: skipping key %s: %s", item.get("kid"), exc)
            continue
        kid = item.get("kid")
        alg = item.get("alg")
        algorithms = _algorithms_for(jwk.key)
        if isinstance(alg, str):
            algorithms &= {alg}
        if not algorithms:
            log.warning("jwk-token: skipping key %s: no accepted algorithm suits it", kid)
            continue
        keys.append(SigningKey(kid if isinstance(kid, str) else None, jwk.key, algorithms))
    if not keys:
        raise ValueError("the JWKS holds no usable signature keys")
    return tuple(keys)


def _json_document(data: bytes) -> Any:
    """The JSON in ``data``; a ``ValueError`` when there is none, including JSON nested too
    deeply for the parser (which raises ``RecursionError``)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply to be a JWKS") from None
    except ValueError:
        raise ValueError("not JSON") from None


def _keys_from_file(path: Path) -> tuple[SigningKey, ...]:
    data = read_bounded(path, MAX_KEYS_BYTES)
    if b"-----BEGIN" in data:
        return _keys_from_pem(data)
    try:
        document = _json_document(data)
    except ValueError as exc:
        if "nested" in str(exc):
            raise
        raise ValueError("neither a JWKS (JSON) nor a PEM file") from None
    return _keys_from_jwks(document)


def _keys_from_pem(data: bytes) -> tuple[SigningKey, ...]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    keys: list[SigningKey] = []
    for index, block in enumerate(data.split(b"-----BEGIN ")[1:]):
        pem = b"-----BEGIN " + block
        if b"PRIVATE KEY-----" in pem.split(b"\n", 1)[0]:
            raise ValueError("holds a private key; give the public key or certificate only")
        try:
            if pem.startswith(b"-----BEGIN CERTIFICATE-----"):
                key: Any = x509.load_pem_x509_certificate(pem).public_key()
            else:
                key = serialization.load_pem_public_key(pem)
        except Exception:  # ValueError, UnsupportedAlgorithm, ...: the file's fault
            raise ValueError(
                f"PEM block {index + 1} is not a public key or certificate that can be read"
            ) from None
        algorithms = _algorithms_for(key)
        if not algorithms:
            raise ValueError(
                f"PEM block {index + 1} holds a {type(key).__name__}, which no accepted "
                "algorithm verifies"
            )
        keys.append(SigningKey(None, key, algorithms))
    if not keys:
        # As for a JWKS without usable keys: a key file that verifies nothing is a mistake.
        raise ValueError("the PEM file holds no public key or certificate")
    return tuple(keys)


def _algorithms_for(key: Any) -> frozenset[str]:
    """The algorithms a public key can verify, by its type and, for EC keys, its curve."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = EC_CURVE_ALGORITHMS.get(key.curve.name)
        return frozenset({algorithm}) if algorithm else frozenset()
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return frozenset({"EdDSA"})
    return frozenset()


def _describe(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return f"cannot read it: {exc.strerror or exc}"
    return str(exc)


def _reason(exc: Exception) -> str:
    """Why a fetch failed, without the URL (and its query) that requests' messages quote."""
    if not isinstance(exc, requests.RequestException | urllib3.exceptions.HTTPError | OSError):
        return str(exc)
    cause = innermost_cause(exc)
    if isinstance(cause, OSError) and cause.strerror:
        return f"{type(cause).__name__}: {cause.strerror}"
    return type(cause).__name__


@hookimpl
def register_plugin_config_schema() -> list[ConfigSchema]:
    return [ConfigSchema(section="authenticator", name=MODULE, schema=SETTINGS_SCHEMA)]


@hookimpl
def register_authenticators(config: Config) -> list[Authenticator]:
    settings = config.authenticator_settings(MODULE)
    options = {**DEFAULTS, **settings}
    source: KeySource
    if settings.get("jwks_url"):
        source = JwksUrl(
            settings["jwks_url"],
            timeout=float(options["jwks_timeout_seconds"]),
            cache_seconds=float(options["jwks_cache_seconds"]),
            min_refresh_seconds=float(options["jwks_min_refresh_seconds"]),
        )
    elif settings.get("jwks_file"):
        source = KeyFile(Path(settings["jwks_file"]))
    else:
        source = NoKeys()
    return [JwkTokenAuthenticator(source, settings)]
