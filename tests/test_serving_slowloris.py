"""Slowloris: 500 connections that drip request headers a few bytes at a time do not lock a normal client
out nor slow it down much, and they are bounded by the header deadline. The attacker is a second process on
loopback; its loops are bounded in count and time."""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import time

import pytest

from torch_estimator.serving.server import serve

from .serving_support import V2, Client, copy_version, exports

NAME = "tiny"
SLOW = 500

ATTACKER = r"""
import resource, socket, sys, time
count, port, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count + 256)), hard))

def connect():
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
    sock.setblocking(False)
    return sock

sockets = [connect() for _ in range(count)]
print("ready", flush=True)
end, reconnects = time.monotonic() + seconds, 0
while time.monotonic() < end:  # one header byte per connection every half second, reconnecting when closed
    for i, sock in enumerate(sockets):
        try:
            sock.send(b"X")
        except OSError:
            sock.close()
            sockets[i] = connect()
            reconnects += 1
    time.sleep(0.5)
print("reconnects", reconnects, flush=True)
"""


# The normal client, in a process of its own as a real client is (in the test's process it would share the
# interpreter lock with the server's thread, and measure that contention rather than the server's).
CLIENT = r"""
import http.client, json, sys, time
port, seconds, path = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
body = json.dumps({"instances": [[0.1, 0.2, 0.3, 0.4]]})
done, end = 0, time.perf_counter() + seconds
while time.perf_counter() < end:
    connection.request("POST", path, body=body)
    response = connection.getresponse()
    response.read()
    assert response.status == 200, response.status
    done += 1
print(done / seconds, flush=True)
"""


def _rate(port: int, seconds: float) -> float:
    """Requests per second a keep-alive client in another process gets answered (each with 200)."""
    out = subprocess.run([sys.executable, "-c", CLIENT, str(port), str(seconds), f"/v1/models/{NAME}:predict"],
                         capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    return float(out)


@pytest.fixture
def more_files():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < SLOW + 512:
        pytest.skip(f"needs {SLOW + 512} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, SLOW + 512), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.slow
def test_500_slow_header_connections_leave_a_normal_client_90_percent_of_its_rate(tmp_path_factory, more_files):
    base = tmp_path_factory.mktemp("slowloris_base")
    copy_version(exports(tmp_path_factory)[V2], base, V2)
    with serve(base, NAME, port=0, poll_secs=0, header_timeout_secs=3) as server:
        _rate(server.port, 0.5)  # warm-up
        ratios, held = [], []
        for _ in range(5):  # paired rounds: the client alone, then under attack
            alone = _rate(server.port, 2.0)
            attacker = subprocess.Popen([sys.executable, "-c", ATTACKER, str(SLOW), str(server.port), "6"],
                                        stdout=subprocess.PIPE, text=True)
            try:
                assert attacker.stdout.readline().strip() == "ready"
                time.sleep(0.5)
                held.append(server.open_connections)
                ratios.append(_rate(server.port, 2.0) / alone)
            finally:
                attacker.kill()
                attacker.communicate(timeout=30)
            deadline = time.monotonic() + 10
            while server.open_connections > 1 and time.monotonic() < deadline:
                time.sleep(0.05)
    print(f"rate under attack / alone, per round: {[round(r, 2) for r in ratios]}; connections held: {held}")
    assert min(held) >= SLOW * 0.9  # the attack really held its connections open
    assert statistics.median(ratios) >= 0.9, ratios


@pytest.mark.slow
def test_dripped_headers_are_cut_at_the_header_deadline(tmp_path_factory, more_files):
    base = tmp_path_factory.mktemp("slowloris_deadline_base")
    copy_version(exports(tmp_path_factory)[V2], base, V2)
    with serve(base, NAME, port=0, poll_secs=0, header_timeout_secs=1) as server:
        attacker = subprocess.Popen([sys.executable, "-c", ATTACKER, "50", str(server.port), "3.5"],
                                    stdout=subprocess.PIPE, text=True)
        out, _ = attacker.communicate(timeout=60)
    reconnects = int(out.split("reconnects")[1])
    assert reconnects >= 50  # every connection was cut at least once within 3.5 s of dripping


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_memory_is_returned_after_concurrent_large_requests(tmp_path_factory):
    """Six concurrent 26 MB bodies: the memory they took is returned afterwards (the server does not keep
    hundreds of MB); requests beyond max_inflight_body_bytes wait their turn, or get a readable 503."""
    import json
    import threading

    from .test_serving_server import _start_cli

    base = tmp_path_factory.mktemp("memory_base")
    copy_version(exports(tmp_path_factory)[V2], base, V2)
    process, port = _start_cli(base, "--poll_secs", "0", "--max_body_bytes", str(32 << 20),
                               "--max_inflight_body_bytes", str(64 << 20))
    try:
        row = [0.123456789, 0.987654321, 0.5, 0.25]
        body = json.dumps({"inputs": {"x": [row] * 680_000}}).encode()  # about 26 MB
        assert 24 << 20 < len(body) < 32 << 20
        assert Client(port).post(f"/v1/models/{NAME}:predict", {"instances": [row]})[0] == 200
        before = _rss_mib(process.pid)
        statuses: list = []

        def post():
            statuses.append(Client(port, timeout=300).request("POST", f"/v1/models/{NAME}:predict", body)[0])

        threads = [threading.Thread(target=post) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        time.sleep(1.0)
        after = _rss_mib(process.pid)
        print(f"server RSS before {before:.0f} MiB, after six 26 MB requests {after:.0f} MiB; answers {sorted(statuses)}")
        assert len(statuses) == 6 and set(statuses) <= {200, 503} and 200 in statuses
        assert after - before < 200, (before, after)  # it kept about 300 MB before memory was returned
    finally:
        process.terminate()
        process.communicate(timeout=60)
