"""One exception hierarchy for the whole service.

Every error that can reach a client knows its HTTP status and the two strings of the error
envelope (``response``: short, ``cause``: why), so the web layer maps them in one place and
plugins can raise them without knowing anything about HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .surrogates import replace_surrogates


class CollectorError(Exception):
    """Base of every error the service raises on purpose."""

    status: int = 500
    response: str = "Internal server error"

    def __init__(self, cause: str, *, response: str | None = None) -> None:
        # Causes often quote what a provider or receiver said, which may hold lone
        # surrogates; every response, stream and log line must be able to carry them.
        cause = replace_surrogates(cause)
        super().__init__(cause)
        self.cause = cause
        if response is not None:
            self.response = replace_surrogates(response)


class BadRequest(CollectorError):
    status = 400
    response = "Malformed request"


class Unauthorized(CollectorError):
    status = 401
    response = "Missing or invalid credentials provided by client"


class Forbidden(CollectorError):
    status = 403
    response = "User does not have permission to perform this action"


class NotFound(CollectorError):
    status = 404
    response = "Not found"


class PayloadTooLarge(CollectorError):
    status = 413
    response = "Request body too large"


class UnsupportedMediaType(CollectorError):
    status = 415
    response = "Unsupported media type"


@dataclass(frozen=True)
class FieldError:
    """One problem with one field; ``loc`` is the path to it, e.g. ``("body", "sentiment")``."""

    loc: tuple[str | int, ...]
    msg: str


class ValidationFailed(CollectorError):
    status = 422
    response = "Invalid request"

    def __init__(self, errors: Sequence[FieldError], *, response: str | None = None) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(map(_named, self.errors)), response=response)


def _named(error: FieldError) -> str:
    """The message with the field it is about, unless it names it already: in ``cause`` the
    messages stand without their ``loc`` ("Field required" of which field?)."""
    path = [str(part) for part in error.loc[1:]] if error.loc[:1] == ("body",) else []
    path = path or [str(part) for part in error.loc]
    if not path or f"'{path[-1]}'" in error.msg or f"'{'.'.join(path)}'" in error.msg:
        return error.msg
    return f"{'.'.join(path)}: {error.msg}"


class RateLimited(CollectorError):
    status = 429
    response = "The model provider is rate limiting requests"

    def __init__(self, cause: str, *, retry_after: int | None = None) -> None:
        super().__init__(cause)
        self.retry_after = retry_after


class ProviderFailed(CollectorError):
    status = 502
    response = "The model provider failed"


class ProviderTimeout(CollectorError):
    status = 504
    response = "The model provider did not answer in time"


class StorageFull(CollectorError):
    status = 507
    response = "Storage is full"


class ServiceUnavailable(CollectorError):
    """Something the service keeps for itself (the conversations database) cannot be used
    right now: nothing the client sent is wrong, and the same request may succeed later."""

    status = 503
    response = "Service unavailable"


class StorageFailed(CollectorError):
    """A sink could not write for a reason that is the server's, not the client's."""

    status = 500
    response = "Failed to store record"


class RecordInvalid(CollectorError):
    """A built record broke its own schema: a bug in the service or a plugin, never stored."""

    status = 500
    response = "Record failed schema validation"


class ConfigError(Exception):
    """A configuration problem; the message starts with the key path it concerns."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


class PluginError(Exception):
    """A plugin could not be loaded or conflicts with another; raised at start-up."""


class ExportFailed(Exception):
    """An exporter could not deliver an archive. The archive stays in the outbox and is
    offered again in the next collection cycle; nothing is lost by raising this.

    ``detail`` is logged, so it must never carry a token or record content. ``status`` is
    the receiver's HTTP status when there was one.
    """

    def __init__(self, detail: str, *, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


class ExportUnavailable(ExportFailed):
    """The receiver is temporarily unable to take the archive (5xx, 429, a timeout, no
    connection): the collector retries within the cycle, backing off exponentially.

    ``retry_after`` is the receiver's wish, as seconds or as the raw ``Retry-After`` header
    value (delta-seconds or an HTTP date); the collector waits at least that long.
    """

    def __init__(
        self, detail: str, *, status: int | None = None, retry_after: float | str | None = None
    ) -> None:
        super().__init__(detail, status=status)
        self.retry_after = retry_after


class ArchiveTooLarge(ExportFailed):
    """The receiver refused the archive for its size (413): the collector splits it in two
    and offers both halves; an archive of one record is moved to quarantine instead."""


class ExportMisconfigured(ExportFailed):
    """Retrying cannot help until an operator fixes ``setting`` (the full key path), e.g.
    a refused token (401/403), a refused content type (415) or an unreadable token file.
    The collector stops uploading for the rest of the cycle and reports the setting."""

    def __init__(self, detail: str, *, setting: str, status: int | None = None) -> None:
        super().__init__(detail, status=status)
        self.setting = setting


def listen_failure(exc: OSError | ValueError) -> tuple[int | None, str]:
    """The errno and the reason a server could not listen. waitress reports a host that does
    not resolve as a ValueError raised while handling the lookup's own error."""
    cause = exc if isinstance(exc, OSError) else exc.__context__
    if isinstance(cause, OSError):
        return cause.errno, cause.strerror or str(cause)
    return None, str(exc)


def innermost_cause(exc: BaseException) -> BaseException:
    """The error at the bottom of a chain of wrapped ones.

    requests wraps urllib3's errors, which wrap the socket's, and each layer's message
    quotes the URL with its query; the innermost one says what went wrong and nothing more.
    """
    cause = exc
    for _ in range(10):
        inner = cause.__cause__ or cause.__context__
        if inner is None:
            break
        cause = inner
    return cause
