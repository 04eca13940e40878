"""Errors of the core package. Messages a user sees name what to do; codes are stable."""

from __future__ import annotations


class CrumbError(Exception):
    code = "crumb_error"


class WarehouseBusy(CrumbError):
    """Another process holds the embedded warehouse directory."""

    code = "warehouse_busy"

    def __init__(self, url: str) -> None:
        super().__init__(f"{url} is held by another process (is `crumb serve` running?)")


class ControlError(CrumbError):
    """The running server refused or failed a command sent to its control endpoint."""

    code = "control_error"


class InvalidArguments(CrumbError):
    """A command's arguments (from the CLI, or a control request's body) are not of its kind."""

    code = "invalid_request"
