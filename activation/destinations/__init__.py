"""Server-to-server destinations: one small protocol (base.py), one module per platform.

  base.py     Item, Batch, PushResult, the error tree, the Destination protocol
  ttd.py      The Trade Desk Data API (JSON, FailedLines)
  xandr.py    Xandr Batch Segment Service (gzip Latin-1 file: job → upload → poll)
  google.py   Google Authorized Buyers bulk uploader (protobuf, ≤ 100 KB a request)
  webhook.py  our own signed-JSON webhook
  url.py      URL destinations the tag fires in the browser (templates only)
  config.py   YAML in CRUMB_DESTINATIONS_DIR → configured destinations
"""

from activation.destinations.base import (
    AuthError,
    Batch,
    Destination,
    DestinationError,
    Failure,
    Item,
    PermanentError,
    PushResult,
    RetryableError,
)

__all__ = [
    "AuthError", "Batch", "Destination", "DestinationError", "Failure", "Item", "PermanentError", "PushResult",
    "RetryableError",
]
