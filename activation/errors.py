"""Errors of the activation package a user may see. Each carries a stable code."""

from __future__ import annotations

from crumb.errors import CrumbError


class ActivationError(CrumbError):
    code = "activation_error"


class DestinationConfigError(ActivationError):
    """A destinations file is invalid: the message names the file, the field and the problem."""

    code = "invalid_destination"
