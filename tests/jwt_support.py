"""Real signing keys, real JWTs, and a JWKS served from loopback, for the jwk-token tests."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://sso.example.test"
AUDIENCE = "lightspeed"


@dataclass
class SigningKey:
    kid: str
    algorithm: str
    private: Any

    @classmethod
    def rsa(cls, kid: str) -> SigningKey:
        return cls(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def ec(cls, kid: str) -> SigningKey:
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    def jwk(self) -> dict[str, Any]:
        codec = RSAAlgorithm if self.algorithm.startswith(("RS", "PS")) else ECAlgorithm
        entry: dict[str, Any] = json.loads(codec.to_jwk(self.private.public_key()))
        entry.update({"kid": self.kid, "use": "sig", "alg": self.algorithm})
        return entry

    def public_pem(self) -> bytes:
        pem: bytes = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem

    def token(self, with_kid: bool = True, expires_in: float = 300, **claims: Any) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "alice-id",
            "preferred_username": "alice",
            "iat": now,
            "exp": now + int(expires_in),
        }
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        headers = {"kid": self.kid} if with_kid else None
        encoded: str = jwt.encode(payload, self.private, algorithm=self.algorithm, headers=headers)
        return encoded


@dataclass
class JwksServer:
    """Serves ``keys`` as a JWKS at ``/jwks.json`` and counts how often it was fetched."""

    keys: list[SigningKey] = field(default_factory=list)
    body: bytes | None = None
    """Served instead of the JWKS of ``keys`` when set."""
    status: int = 200
    redirect_to: str | None = None
    """Answered with a 302 to this URL instead of a key set when set."""
    delay: float = 0
    """Seconds to wait before answering, as an overloaded identity provider does."""
    byte_interval: float = 0
    """Seconds between two bytes of the answer: a server that trickles, never quite silent."""
    fetches: int = 0
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/jwks.json"

    def document(self) -> dict[str, Any]:
        return {"keys": [key.jwk() for key in self.keys]}

    def start(self) -> JwksServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

            def do_GET(self) -> None:
                owner.fetches += 1
                time.sleep(owner.delay)
                if owner.redirect_to is not None:
                    self.send_response(302)
                    self.send_header("Location", owner.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = (
                    owner.body if owner.body is not None else json.dumps(owner.document()).encode()
                )
                self.send_response(owner.status if self.path.startswith("/jwks.json") else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not owner.byte_interval:
                    self.wfile.write(data)
                    return
                try:
                    for index in range(len(data)):
                        self.wfile.write(data[index : index + 1])
                        self.wfile.flush()
                        time.sleep(owner.byte_interval)
                except OSError:
                    pass  # the service gave up waiting, as it should

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
