"""Google Authorized Buyers bulk uploader: `POST /upload?nid=`, protobuf in and out."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from activation.destinations import google_proto as pb
from tests.activation.conformance.server import Faults, LoopbackServer, off_spec

MAX_BYTES = 100_000
ALLOWED_ID_TYPES = {pb.USER_ID_TYPES["GOOGLE_USER_ID"], pb.USER_ID_TYPES["PARTNER_PROVIDED_ID"]}


class GoogleServer:
    def __init__(self, nid: str = "crumb-nid") -> None:
        self.nid = nid
        self.faults = Faults()
        self.op_errors: dict[str, str] = {}  # user_id → ErrorCode name answered for its ops
        self.accepted: list[tuple[str, int, int, bool]] = []  # (user_id, user_id_type, user_list_id, delete)
        self.state: set[tuple[str, int]] = set()
        self.request_sizes: list[int] = []
        self.app = Starlette(routes=[Route("/upload", self._upload, methods=["POST"])])
        self.server = LoopbackServer(self.app)

    @property
    def url(self) -> str:
        return self.server.url

    async def _upload(self, request: Request) -> Response:
        fault = self.faults.take()
        if fault:
            return fault
        if request.query_params.get("nid") != self.nid:
            return off_spec("unknown nid", 403)
        body = await request.body()
        self.request_sizes.append(len(body))
        if len(body) > MAX_BYTES:
            return _reply(pb.UpdateUsersDataResponse(status=pb.ERROR_CODES["REQUEST_TOO_BIG"]))
        try:
            message = pb.UpdateUsersDataRequest.FromString(body)
        except Exception:  # noqa: BLE001 — any parse failure is off-spec
            return off_spec("not an UpdateUsersDataRequest")
        if not message.ops:
            return _reply(pb.UpdateUsersDataResponse(status=pb.ERROR_CODES["EMPTY_REQUEST"]))
        if not message.process_consent:
            return off_spec("process_consent must be true")
        reply = pb.UpdateUsersDataResponse(status=pb.ERROR_CODES["NO_ERROR"])
        for op in message.ops:
            if not op.user_id or op.user_list_id <= 0 or op.user_id_type not in ALLOWED_ID_TYPES:
                return off_spec(f"bad operation {op}")
            code = self.op_errors.get(op.user_id)
            if code:
                reply.errors.add(user_id=op.user_id, user_list_id=op.user_list_id, user_id_type=op.user_id_type,
                                 error_code=pb.ERROR_CODES[code])
                reply.status = pb.ERROR_CODES["PARTIAL_SUCCESS"]
                continue
            self.accepted.append((op.user_id, op.user_id_type, op.user_list_id, op.delete))
            (self.state.discard if op.delete else self.state.add)((op.user_id, op.user_list_id))
        return _reply(reply)


def _reply(message: object) -> Response:
    return Response(message.SerializeToString(), media_type="application/octet-stream")  # type: ignore[attr-defined]
