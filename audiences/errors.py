"""Errors of the audiences package. Each carries a stable code; messages name what is wrong."""

from __future__ import annotations

from crumb.errors import CrumbError


class AudiencesError(CrumbError):
    code = "audiences_error"


class DefinitionError(AudiencesError):
    """A segment definition is invalid: the message names the file, the path in the tree and the problem."""

    code = "invalid_definition"


class BuildError(AudiencesError):
    code = "build_failed"


class UnknownSegment(AudiencesError):
    code = "unknown_segment"


class InvalidRequest(AudiencesError):
    """A report, preview or lookalike was asked for something out of range or not possible."""

    code = "invalid_request"
