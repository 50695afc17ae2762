"""Guards that keep these tests off the network: Google auth lookups and outbound sockets fail loudly."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from unittest import mock

import google.auth
import pytest


@pytest.fixture
def offline() -> Iterator[None]:
    """Any attempt to find default credentials (metadata server, gcloud) or to connect anywhere fails."""

    def refuse_connect(sock: socket.socket, address: object) -> None:
        raise AssertionError(f"test tried to open a network connection to {address!r}")

    with (
        mock.patch.object(google.auth, "default", side_effect=AssertionError("test looked up default credentials")),
        mock.patch.object(socket.socket, "connect", refuse_connect),
        mock.patch.object(socket.socket, "connect_ex", refuse_connect),
    ):
        yield
