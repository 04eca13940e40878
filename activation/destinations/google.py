"""Google Authorized Buyers bulk uploader: `POST /upload?nid=<NID>`, a protobuf
UpdateUsersDataRequest of at most 100 KB, answered by an UpdateUsersDataResponse whose `errors`
name the failed operations. Only INTERNAL_ERROR is worth retrying.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import httpx

from activation.destinations import google_proto as pb
from activation.destinations.base import (
    Batch,
    Failure,
    Item,
    PermanentError,
    PushResult,
    RetryableError,
    request,
    send_parts,
)

MAX_REQUEST_BYTES = 100_000  # Google: "limited to 100 KB"; decimal kilobytes keeps us under either reading
CONTENT_TYPE = "application/octet-stream"
_OK = (pb.ERROR_CODES["NO_ERROR"], pb.ERROR_CODES["PARTIAL_SUCCESS"])
_RETRYABLE = pb.ERROR_CODES["INTERNAL_ERROR"]


class GoogleDestination:
    def __init__(
        self, name: str, endpoint: str, network_id: str, client: httpx.Client,
        user_id_type: str = "GOOGLE_USER_ID", max_batch_items: int = 5000, max_request_bytes: int = MAX_REQUEST_BYTES,
    ) -> None:
        self.name = name
        self.max_batch_items = max_batch_items
        self._url = endpoint.rstrip("/") + "/upload"
        self._nid = network_id
        self._client = client
        self._user_id_type = pb.USER_ID_TYPES[user_id_type]
        self._max_bytes = max_request_bytes

    def push(self, batch: Batch) -> PushResult:
        return send_parts(self._parts(batch.items), self._send)

    def _operation(self, item: Item) -> Any:
        return pb.UserDataOperation(
            user_id=item.partner_uid, user_id_type=self._user_id_type, user_list_id=int(item.partner_segment),
            delete=item.change == "exit",
        )

    def _parts(self, items: Sequence[Item]) -> Iterator[list[Item]]:
        """Consecutive runs of items whose request serializes to at most max_request_bytes."""
        part: list[Item] = []
        size = 2  # process_consent: tag + value
        for item in items:
            op_size = _embedded_size(self._operation(item).ByteSize())
            if part and size + op_size > self._max_bytes:
                yield part
                part, size = [], 2
            part.append(item)
            size += op_size
        if part:
            yield part

    def _send(self, items: Sequence[Item]) -> PushResult:
        message = pb.UpdateUsersDataRequest(ops=[self._operation(i) for i in items], process_consent=True)
        response = request(
            self._client, "POST", self._url, params={"nid": self._nid}, content=message.SerializeToString(),
            headers={"Content-Type": CONTENT_TYPE},
        )
        reply = pb.UpdateUsersDataResponse.FromString(response.content)
        return _result(items, reply)


def _result(items: Sequence[Item], reply: Any) -> PushResult:
    if not reply.errors and reply.status not in _OK:
        name = pb.ERROR_NAMES.get(reply.status, str(reply.status))
        if reply.status == _RETRYABLE:
            raise RetryableError(f"Google answered {name}", code=name)
        raise PermanentError(f"Google answered {name}", code=name)
    by_key: dict[tuple[str, int], list[Item]] = {}
    for item in items:
        by_key.setdefault((item.partner_uid, int(item.partner_segment)), []).append(item)
    failed: dict[Item, Failure] = {}
    for error in reply.errors:
        name = pb.ERROR_NAMES.get(error.error_code, str(error.error_code))
        for item in by_key.get((error.user_id, error.user_list_id), []):
            failed[item] = Failure(item, name, f"Google answered {name}", error.error_code == _RETRYABLE)
    return PushResult([i for i in items if i not in failed], list(failed.values()), requests=1)


def _embedded_size(length: int) -> int:
    """Bytes a length-delimited field of `length` bytes takes: 1 tag byte + varint length + payload."""
    varint = 1
    while length >= 0x80 << (7 * (varint - 1)):
        varint += 1
    return 1 + varint + length
