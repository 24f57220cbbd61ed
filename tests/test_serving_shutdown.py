"""Graceful shutdown: requests in flight finish, new work is refused, and a signal stops the server."""

from __future__ import annotations

import http.client
import logging
import os
import signal
import socket
import threading
import time

import pytest

from torch_estimator.serving.server import serve

from .serving_support import Client, fake_base, fake_model


class Gate:
    """A runner that blocks until released, so a request stays in flight as long as a test needs."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, inputs):
        if inputs["x"].shape[0] == 3:  # the tests' requests have 3 rows; the self-check's have 1 or 2
            self.entered.set()
            self.release.wait(20)
        return {"y": inputs["x"] * 2}


@pytest.fixture
def gated(tmp_path):
    gate = Gate()
    server = serve(fake_base(tmp_path, [1]), "m", port=0, poll_secs=0, load_fn=lambda path: fake_model(gate))
    yield server, gate
    gate.release.set()
    server.stop(timeout=5)


def _post_in_thread(port, results):
    def post():
        try:
            results.append(Client(port).post("/v1/models/m:predict", {"instances": [[1.0, 2.0]] * 3})[:2])
        except (ConnectionError, OSError) as error:  # a server that gave up on the request closes the connection
            results.append(error)

    thread = threading.Thread(target=post)
    thread.start()
    return thread


def test_stop_lets_a_request_in_flight_finish(gated):
    server, gate = gated
    results: list = []
    thread = _post_in_thread(server.port, results)
    assert gate.entered.wait(10)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    time.sleep(0.3)
    assert stopper.is_alive()  # waiting for the request
    gate.release.set()
    stopper.join(10)
    thread.join(10)
    assert results == [(200, {"predictions": [[2.0, 4.0]] * 3})]


def test_while_draining_new_connections_are_refused_and_idle_ones_closed(gated):
    server, gate = gated
    idle = Client(server.port)
    assert idle.get("/v2/health/live")[0] == 200  # a kept-alive connection
    results: list = []
    thread = _post_in_thread(server.port, results)
    assert gate.entered.wait(10)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    deadline = time.monotonic() + 10
    while not server.stopping and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # the listening socket and idle connections are closed shortly after
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        idle.get("/v2/health/live")
    with pytest.raises(ConnectionRefusedError):
        Client(server.port, timeout=2).get("/v2/health/live")
    gate.release.set()
    stopper.join(10)
    thread.join(10)
    assert results[0][0] == 200


def test_stop_gives_up_on_a_request_after_its_timeout(gated, caplog):
    server, gate = gated
    results: list = []
    thread = _post_in_thread(server.port, results)
    assert gate.entered.wait(10)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="torch_estimator.serving"):
        server.stop(timeout=0.3)
    assert time.monotonic() - started < 5
    assert "Stopping with 1 request(s) still in flight after 0.3s" in caplog.text
    gate.release.set()
    thread.join(10)
    assert isinstance(results[0], ConnectionError)  # the connection was closed under it


def test_sigterm_stops_serve_until_signal_after_the_request_in_flight(gated):
    server, gate = gated
    results: list = []
    thread = _post_in_thread(server.port, results)
    assert gate.entered.wait(10)
    previous = signal.getsignal(signal.SIGTERM)

    def send_sigterm_once_handled():
        deadline = time.monotonic() + 10
        while signal.getsignal(signal.SIGTERM) is previous and time.monotonic() < deadline:
            time.sleep(0.01)  # never signal before serve_until_signal has installed its handler
        if signal.getsignal(signal.SIGTERM) is not previous:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.3)
        gate.release.set()

    helper = threading.Thread(target=send_sigterm_once_handled)
    helper.start()
    server.serve_until_signal()  # returns once the signal came and the request finished
    helper.join(10)
    thread.join(10)
    assert results == [(200, {"predictions": [[2.0, 4.0]] * 3})]
    assert server.wait(0) and signal.getsignal(signal.SIGTERM) is previous


def test_stop_does_not_wait_for_connections_whose_headers_never_arrived(gated):
    server, gate = gated
    slow = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(5)]
    try:
        for i, sock in enumerate(slow):  # some send part of a request line and headers, some nothing
            if i % 2:
                sock.sendall(b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nContent-Le")
        deadline = time.monotonic() + 10
        while server.open_connections < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        server.stop(timeout=20)
        assert time.monotonic() - started < 3  # well under the 20 s it would wait for requests in flight
        for sock in slow:
            assert sock.recv(1024) == b""  # closed without an answer: there was no request
    finally:
        for sock in slow:
            sock.close()


def test_a_request_arriving_on_an_open_connection_while_stopping_gets_503(gated):
    server, gate = gated
    results: list = []
    thread = _post_in_thread(server.port, results)
    assert gate.entered.wait(10)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # headers started before the stop...
        deadline = time.monotonic() + 10
        while server.open_connections < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.stopping = True  # ...and finished just after it began (the app checks this flag per request)
        sock.sendall(b"\r\n")
        answer = b""
        while chunk := sock.recv(65536):  # the server closes the connection after answering
            answer += chunk
    server.stopping = False
    gate.release.set()
    thread.join(10)
    assert answer.startswith(b"HTTP/1.1 503 ") and b"connection: close" in answer.lower(), answer
    assert b"The server is shutting down" in answer
