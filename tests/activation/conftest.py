"""The ad platforms' conformance servers, one per test, on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.activation.conformance.google import GoogleServer
from tests.activation.conformance.ttd import TTDServer
from tests.activation.conformance.webhook import WebhookServer
from tests.activation.conformance.xandr import XandrServer


def _served(platform: Any) -> Iterator[Any]:
    platform.server.start()
    yield platform
    platform.server.stop()


@pytest.fixture
def ttd() -> Iterator[TTDServer]:
    yield from _served(TTDServer())


@pytest.fixture
def xandr() -> Iterator[XandrServer]:
    yield from _served(XandrServer())


@pytest.fixture
def google() -> Iterator[GoogleServer]:
    yield from _served(GoogleServer())


@pytest.fixture
def hook() -> Iterator[WebhookServer]:
    yield from _served(WebhookServer())


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client
