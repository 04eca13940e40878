"""Google's cookie-bulk-upload.proto (protocol v.24), built at import time: no codegen step.

Field numbers follow Google's published file (developers.google.com/authorized-buyers/rtb/
downloads/cookie-bulk-upload-proto); only the fields Crumb reads or writes are declared —
protobuf keeps unknown fields, so a fuller peer still parses our messages and we parse theirs.
Checked against that page (v.24: the UserIdType values, UserDataOperation up to user_list_id)
and a generated copy of the file in segmentio/action-destinations (display-video-360/proto:
every UserDataOperation, ErrorInfo, NotificationInfo and UpdateUsersDataResponse number, the
ErrorCode values to 21). That copy predates `process_consent` (3 here) and the consent error
codes (22, 23), which no stored source showed; tests/activation/test_destinations.py pins the
wire bytes so a change to any number is deliberate.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message_factory import GetMessageClass

_F = descriptor_pb2.FieldDescriptorProto
PACKAGE = "crumb.google_bulk_upload"

USER_ID_TYPES = {
    "GOOGLE_USER_ID": 0, "IDFA": 1, "ANDROID_ADVERTISING_ID": 2, "PARTNER_PROVIDED_ID": 4, "RIDA": 5, "AFAI": 6,
    "MSAI": 7, "GENERIC_DEVICE_ID": 9,
}
ERROR_CODES = {
    "NO_ERROR": 0, "PARTIAL_SUCCESS": 1, "PERMISSION_DENIED": 2, "BAD_DATA": 3, "BAD_COOKIE": 4,
    "BAD_ATTRIBUTE_ID": 5, "BAD_NETWORK_ID": 7, "REQUEST_TOO_BIG": 8, "EMPTY_REQUEST": 9, "INTERNAL_ERROR": 10,
    "BAD_DATA_SOURCE_ID": 11, "BAD_TIMESTAMP": 12, "UNKNOWN_ID": 21, "MISSING_CONSENT_WILL_BE_DROPPED": 22,
    "MISSING_CONSENT": 23,
}
ERROR_NAMES = {number: name for name, number in ERROR_CODES.items()}
USER_ID_TYPE_NAMES = {number: name for name, number in USER_ID_TYPES.items()}

# (message, [(field, number, type, label, enum type or None, default or None)])
_OPTIONAL, _REPEATED = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_MESSAGES: list[tuple[str, list[tuple[str, int, int, int, str | None, str | None]]]] = [
    ("UserDataOperation", [
        ("user_id", 1, _F.TYPE_STRING, _OPTIONAL, None, ""),
        ("user_id_type", 14, _F.TYPE_ENUM, _OPTIONAL, "UserIdType", "GOOGLE_USER_ID"),
        ("user_list_id", 4, _F.TYPE_INT64, _OPTIONAL, None, "0"),
        ("time_added_to_user_list", 5, _F.TYPE_INT64, _OPTIONAL, None, "0"),
        ("time_added_to_user_list_in_usec", 8, _F.TYPE_INT64, _OPTIONAL, None, "0"),
        ("delete", 6, _F.TYPE_BOOL, _OPTIONAL, None, "false"),
        ("opt_out", 12, _F.TYPE_BOOL, _OPTIONAL, None, "false"),
    ]),
    ("UpdateUsersDataRequest", [
        ("ops", 1, _F.TYPE_MESSAGE, _REPEATED, "UserDataOperation", None),
        ("send_notifications", 2, _F.TYPE_BOOL, _OPTIONAL, None, "false"),
        ("process_consent", 3, _F.TYPE_BOOL, _OPTIONAL, None, "false"),
    ]),
    ("ErrorInfo", [
        ("user_list_id", 2, _F.TYPE_INT64, _OPTIONAL, None, None),
        ("user_id", 3, _F.TYPE_STRING, _OPTIONAL, None, None),
        ("user_id_type", 7, _F.TYPE_ENUM, _OPTIONAL, "UserIdType", None),
        ("error_code", 4, _F.TYPE_ENUM, _OPTIONAL, "ErrorCode", None),
    ]),
    ("NotificationInfo", [
        ("user_id", 1, _F.TYPE_STRING, _OPTIONAL, None, None),
        ("notification_code", 2, _F.TYPE_ENUM, _OPTIONAL, "NotificationCode", None),
    ]),
    ("UpdateUsersDataResponse", [
        ("status", 1, _F.TYPE_ENUM, _OPTIONAL, "ErrorCode", None),
        ("errors", 2, _F.TYPE_MESSAGE, _REPEATED, "ErrorInfo", None),
        ("notifications", 3, _F.TYPE_MESSAGE, _REPEATED, "NotificationInfo", None),
        ("notification_status", 4, _F.TYPE_ENUM, _OPTIONAL, "NotificationStatus", None),
    ]),
]
_ENUMS = {
    "UserIdType": USER_ID_TYPES,
    "ErrorCode": ERROR_CODES,
    "NotificationCode": {"INACTIVE_COOKIE": 0},
    "NotificationStatus": {"NO_NOTIFICATION": 0, "NOTIFICATIONS_OMITTED": 1},
}


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name="crumb/cookie-bulk-upload.proto", package=PACKAGE, syntax="proto2")
    for enum_name, values in _ENUMS.items():
        enum = proto.enum_type.add(name=enum_name)
        for value_name, number in values.items():
            enum.value.add(name=value_name, number=number)
    for message_name, fields in _MESSAGES:
        message = proto.message_type.add(name=message_name)
        for name, number, kind, label, type_name, default in fields:
            field = message.field.add(name=name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = f".{PACKAGE}.{type_name}"
            if default is not None:
                field.default_value = default
    return proto


_POOL = descriptor_pool.DescriptorPool()
_DESCRIPTOR = _POOL.Add(_file())


def _message(name: str) -> Any:
    return GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


UserDataOperation = _message("UserDataOperation")
UpdateUsersDataRequest = _message("UpdateUsersDataRequest")
ErrorInfo = _message("ErrorInfo")
UpdateUsersDataResponse = _message("UpdateUsersDataResponse")
