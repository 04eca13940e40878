"""The vocabulary every destination speaks, and the error tree its adapter maps HTTP onto.

    DestinationError
     ├── RetryableError   429, 5xx, timeouts, connection failures (may carry Retry-After)
     └── PermanentError   the platform refused the request for good (4xx)
          └── AuthError   401/403: the credentials are wrong; the run stops, nothing is dead-lettered

Adapters send platform-legal requests; a request-level error becomes a per-item failure of the
items in that request (`send_parts`), so one push reports exactly what reached the platform.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal, NamedTuple, Protocol, TypeVar

import httpx

Change = Literal["enter", "exit"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Item:
    id: str  # our ID (cookie or first-party)
    partner_uid: str  # the ID the platform knows (or ours, for `ids: cookie`)
    segment_id: int
    partner_segment: str
    change: Change
    ttl_minutes: int


@dataclass(frozen=True, slots=True)
class Batch:
    items: Sequence[Item]


class Failure(NamedTuple):
    item: Item
    code: str
    message: str
    retryable: bool


@dataclass(slots=True)
class PushResult:
    delivered: list[Item] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    requests: int = 0
    retry_after_s: float | None = None  # the largest Retry-After the platform asked for
    unattributed: int = 0  # failures the platform counted without saying which (Xandr BSS counters)

    def merge(self, other: PushResult) -> None:
        self.delivered.extend(other.delivered)
        self.failed.extend(other.failed)
        self.requests += other.requests
        self.unattributed += other.unattributed
        self.retry_after_s = _max_optional(self.retry_after_s, other.retry_after_s)


class DestinationError(Exception):
    code = "error"


class RetryableError(DestinationError):
    def __init__(self, message: str, code: str = "retryable", retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after_s = retry_after_s


class PermanentError(DestinationError):
    def __init__(self, message: str, code: str = "rejected") -> None:
        super().__init__(message)
        self.code = code


class AuthError(PermanentError):
    pass


class Destination(Protocol):
    name: str
    max_batch_items: int

    def push(self, batch: Batch) -> PushResult: ...


def raise_for_status(response: httpx.Response) -> None:
    """Translate an HTTP status into the error tree; 2xx passes."""
    status = response.status_code
    if 200 <= status < 300:
        return
    message = f"HTTP {status}: {response.text[:200]}"
    if status == 429 or status >= 500 or status == 408:
        raise RetryableError(message, code=f"http_{status}", retry_after_s=retry_after(response))
    if status in (401, 403):
        raise AuthError(message, code=f"http_{status}")
    raise PermanentError(message, code=f"http_{status}")


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def request(client: httpx.Client, method: str, url: str, **kwargs: object) -> httpx.Response:
    """One HTTP exchange with transport failures mapped to RetryableError and the status checked."""
    try:
        response = client.request(method, url, **kwargs)  # type: ignore[arg-type]
    except httpx.TimeoutException as exc:
        raise RetryableError(f"timeout: {exc}", code="timeout") from None
    except httpx.TransportError as exc:
        raise RetryableError(f"transport: {exc}", code="transport") from None
    raise_for_status(response)
    return response


def send_parts(parts: Iterable[Sequence[Item]], send: Callable[[Sequence[Item]], PushResult]) -> PushResult:
    """Send each platform-legal part; a part's request-level error fails that part's items only."""
    result = PushResult()
    for part in parts:
        try:
            result.merge(send(part))
        except AuthError:
            raise
        except RetryableError as exc:
            result.requests += 1
            result.failed.extend(Failure(item, exc.code, str(exc), True) for item in part)
            result.retry_after_s = _max_optional(result.retry_after_s, exc.retry_after_s)
        except PermanentError as exc:
            result.requests += 1
            result.failed.extend(Failure(item, exc.code, str(exc), False) for item in part)
    return result


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _max_optional(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)
