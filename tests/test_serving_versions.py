"""serving/versions.py: which version is served, hot swaps, failures that keep the old version, pinned
versions within a bound; and the same over HTTP with a client sending requests throughout."""

from __future__ import annotations

import logging
import os
import threading
import time

import numpy as np
import pytest
import torch

from torch_estimator.serving import loader
from torch_estimator.serving.server import serve
from torch_estimator.serving.versions import SelfCheckError, VersionManager, VersionNotFoundError, self_check

from .export_support import data
from .serving_support import V1, V2, Client, copy_version, exports, fake_base, fake_model, scaled


class Loader:
    """A fake ``load_fn``: version -> model factory; counts loads."""

    def __init__(self, factories):
        self.factories, self.loads = dict(factories), []

    def __call__(self, path):
        version = int(os.path.basename(path))
        self.loads.append(version)
        return self.factories[version]()


def _manager(tmp_path, factories, versions=None, **options):
    """A manager over fake version directories (``versions``, default every key of ``factories``)."""
    base = fake_base(tmp_path, sorted(factories if versions is None else versions))
    load = Loader(factories)
    return VersionManager(str(base), "demo", load_fn=load, **options), load, base


def good(factor):
    return lambda: fake_model(scaled(factor))


def broken():
    raise ValueError("signature.json is not valid JSON: Expecting value.")


def _answer(manager, version=None):
    return manager.get(version)({"x": [[1.0, 1.0]]})["y"][0, 0].item()


# ----------------------------------------------------------------------------------------------------------
# The latest version


def test_the_highest_version_is_served(tmp_path):
    manager, load, _ = _manager(tmp_path, {1: good(1), 3: good(3), 2: good(2)})
    manager.poll()
    assert (manager.latest.version, _answer(manager), load.loads) == (3, 3.0, [3])


def test_non_numeric_directories_are_ignored(tmp_path):
    manager, load, base = _manager(tmp_path, {4: good(4)})
    for name in ("temp-9", "latest", "9x", "²"):
        (base / name).mkdir()
    manager.poll()
    assert manager.latest.version == 4


def test_a_new_version_is_swapped_in_and_the_old_one_kept_for_pinned_requests(tmp_path):
    manager, load, base = _manager(tmp_path, {1: good(1), 2: good(2)}, versions=[1])
    manager.poll()
    (base / "2").mkdir()
    manager.poll()
    assert (_answer(manager), _answer(manager, 1), load.loads) == (2.0, 1.0, [1, 2])
    assert [(s.version, s.state) for s in manager.statuses()] == [(2, "AVAILABLE"), (1, "AVAILABLE")]


def test_nothing_is_served_before_a_version_exists(tmp_path):
    manager, _, _ = _manager(tmp_path, {}, versions=[])
    manager.poll()
    with pytest.raises(VersionNotFoundError, match=r"^Servable not found for request: Latest\(demo\)$"):
        manager.get()


def test_a_broken_new_version_does_not_replace_a_good_one(tmp_path, caplog):
    manager, _, base = _manager(tmp_path, {1: good(1), 2: broken}, versions=[1])
    manager.poll()
    (base / "2").mkdir()
    with caplog.at_level(logging.ERROR, logger="torch_estimator.serving"):
        manager.poll()
    assert _answer(manager) == 1.0
    assert "Model 'demo' version 2 failed to load and is not served (still serving version 1): ValueError: " \
           "signature.json is not valid JSON" in caplog.text
    status = manager.statuses(2)[0]
    assert (status.state, status.error_code) == ("END", "UNKNOWN")
    assert status.error_message == ("Version 2 failed to load and is not served: ValueError: signature.json is not "
                                    "valid JSON: Expecting value.")


def test_a_broken_version_is_not_retried_until_its_files_change(tmp_path):
    factories = {1: good(1), 2: broken}
    manager, load, base = _manager(tmp_path, factories)
    manager.poll()
    manager.poll()
    assert load.loads == [2, 1]  # 2 failed once, then 1 was served; 2 was not tried again
    load.factories[2] = good(2)
    (base / "2" / "model.pt").write_bytes(b"now complete")
    manager.poll()
    assert (_answer(manager), load.loads) == (2.0, [2, 1, 2])
    assert manager.statuses(2)[0].state == "AVAILABLE"


def test_a_version_that_fails_its_self_check_is_not_served(tmp_path):
    nan = lambda: fake_model(lambda inputs: {"y": inputs["x"] * float("nan")})  # noqa: E731
    manager, _, base = _manager(tmp_path, {1: good(1), 2: nan}, versions=[1])
    manager.poll()
    (base / "2").mkdir()
    manager.poll()
    assert _answer(manager) == 1.0
    assert "SelfCheckError: signature 'serving_default' output 'y' is not finite on a drawn batch of 1" in manager.statuses(2)[0].error_message


def test_removing_the_served_version_falls_back_to_the_highest_remaining(tmp_path):
    manager, _, base = _manager(tmp_path, {1: good(1), 2: good(2)})
    manager.poll()
    (base / "2").rmdir()
    manager.poll()
    assert _answer(manager) == 1.0


def test_with_every_version_removed_the_loaded_one_keeps_serving(tmp_path, caplog):
    manager, _, base = _manager(tmp_path, {1: good(1)})
    manager.poll()
    (base / "1").rmdir()
    with caplog.at_level(logging.WARNING, logger="torch_estimator.serving"):
        manager.poll()
        manager.poll()
    assert _answer(manager) == 1.0
    assert caplog.text.count("was removed from disk") == 1


# ----------------------------------------------------------------------------------------------------------
# Pinned versions


def test_an_older_version_is_loaded_on_demand(tmp_path):
    manager, load, _ = _manager(tmp_path, {1: good(1), 2: good(2)})
    manager.poll()
    assert (_answer(manager, 1), _answer(manager, 1), load.loads) == (1.0, 1.0, [2, 1])


def test_pinned_versions_are_bounded_least_recently_used_first(tmp_path):
    manager, load, _ = _manager(tmp_path, {1: good(1), 2: good(2), 3: good(3)}, max_cached_versions=1)
    manager.poll()
    _answer(manager, 1)
    _answer(manager, 2)  # evicts 1
    _answer(manager, 1)  # loads 1 again, evicts 2
    assert load.loads == [3, 1, 2, 1]
    assert [(s.version, s.state) for s in manager.statuses()] == [(3, "AVAILABLE"), (2, "END"), (1, "AVAILABLE")]


def test_no_cache_serves_the_latest_only(tmp_path):
    manager, _, _ = _manager(tmp_path, {1: good(1), 2: good(2)}, max_cached_versions=0)
    manager.poll()
    with pytest.raises(VersionNotFoundError, match=r"Specific\(demo, 1\); this server serves the latest version only"):
        manager.get(1)


def test_an_unknown_version_is_not_found(tmp_path):
    manager, _, _ = _manager(tmp_path, {1: good(1)})
    manager.poll()
    with pytest.raises(VersionNotFoundError, match=r"^Servable not found for request: Specific\(demo, 9\)$"):
        manager.get(9)


def test_a_broken_pinned_version_says_why_and_is_not_reloaded(tmp_path):
    manager, load, _ = _manager(tmp_path, {1: broken, 2: good(2)})
    manager.poll()
    for _ in range(2):
        with pytest.raises(VersionNotFoundError, match=r"Specific\(demo, 1\); it failed to load: ValueError: signature.json"):
            manager.get(1)
    assert load.loads == [2, 1]


def test_concurrent_requests_for_a_pinned_version_load_it_once(tmp_path):
    slow = lambda: (time.sleep(0.2), fake_model(scaled(1)))[1]  # noqa: E731
    manager, load, _ = _manager(tmp_path, {1: slow, 2: good(2)})
    manager.poll()
    threads = [threading.Thread(target=manager.get, args=(1,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert load.loads == [2, 1]


# ----------------------------------------------------------------------------------------------------------
# The self-check


def test_self_check_passes_a_real_export(tmp_path_factory):
    self_check(loader.load(exports(tmp_path_factory)[V1]))


@pytest.mark.parametrize("runner, message", [
    (lambda i: {"z": i["x"]}, r"signature 'serving_default' returned outputs \['z'\], declared \['y'\]"),
    (lambda i: {"y": i["x"].double()}, r"output 'y' is torch.float64 \[1, 2\], declared float32 \[-1, 2\]"),
    (lambda i: {"y": i["x"][:, :1]}, r"output 'y' is torch.float32 \[1, 1\], declared float32 \[-1, 2\]"),
    (lambda i: {"y": torch.zeros(2)[5]}, r"signature 'serving_default' failed on a drawn batch of 1: IndexError: index 5"),
])
def test_self_check_names_what_is_wrong(runner, message):
    with pytest.raises(SelfCheckError, match=message):
        self_check(fake_model(runner))


def test_self_check_draws_small_integers_for_integer_inputs():
    seen = []
    model = fake_model(lambda i: (seen.append(i["ids"]), {"y": i["ids"].float()})[1],
                       inputs={"ids": {"dtype": "int64", "shape": [-1, 2]}})
    self_check(model)
    assert all(int(t.min()) >= 0 and int(t.max()) <= 1 for t in seen) and [t.shape[0] for t in seen] == [1, 2]


# ----------------------------------------------------------------------------------------------------------
# Over HTTP, with real exports


def _probabilities(client, x):
    status, body, _ = client.post("/v1/models/tiny:predict", {"inputs": {"x": x.tolist()}})
    return status, (np.asarray(body["outputs"]["probabilities"], dtype=np.float32) if status == 200 else body)


def test_hot_swap_while_clients_send_requests_fails_no_request(tmp_path, tmp_path_factory):
    dirs = exports(tmp_path_factory)
    base = tmp_path / "base"
    base.mkdir()
    copy_version(dirs[V1], base, V1)
    x = data(2, seed=31)[0]
    expected = {v: loader.load(dirs[v])({"x": x})["probabilities"].numpy() for v in (V1, V2)}
    answers: dict[int, list] = {0: [], 1: []}
    stop = threading.Event()

    def client_loop(index):
        client = Client(server.port)
        deadline = time.monotonic() + 60
        while not stop.is_set() and len(answers[index]) < 3000 and time.monotonic() < deadline:
            answers[index].append(_probabilities(client, x))

    with serve(base, "tiny", port=0, poll_secs=0.05) as server:
        clients = [threading.Thread(target=client_loop, args=(i,)) for i in answers]
        for thread in clients:
            thread.start()
        while min(len(a) for a in answers.values()) < 20 and all(t.is_alive() for t in clients):
            time.sleep(0.01)
        copy_version(dirs[V2], base, V2)
        deadline = time.monotonic() + 30
        while server.versions.latest.version != V2 and time.monotonic() < deadline:
            time.sleep(0.01)
        seen = {i: len(a) for i, a in answers.items()}
        while any(len(answers[i]) < seen[i] + 20 for i in answers) and all(t.is_alive() for t in clients):
            time.sleep(0.01)
        stop.set()
        for thread in clients:
            thread.join(30)
    assert server.versions.latest.version == V2
    for sequence in answers.values():
        assert all(status == 200 for status, _ in sequence), [a for a in sequence if a[0] != 200][:1]
        versions = [next(v for v in (V1, V2) if np.array_equal(p, expected[v])) for _, p in sequence]
        first_new = versions.index(V2)
        assert versions[:first_new] == [V1] * first_new and set(versions[first_new:]) == {V2}, "the swap is not atomic"
        assert first_new >= 20 and len(versions) - first_new >= 20


def test_a_broken_new_version_keeps_the_good_one_serving_over_http(tmp_path, tmp_path_factory):
    dirs = exports(tmp_path_factory)
    base = tmp_path / "base"
    base.mkdir()
    copy_version(dirs[V1], base, V1)
    x = data(2, seed=32)[0]
    expected = loader.load(dirs[V1])({"x": x})["probabilities"].numpy()
    with serve(base, "tiny", port=0, poll_secs=0) as server:
        broken = copy_version(dirs[V2], base, 7)
        with open(os.path.join(broken, "model.pt"), "r+b") as file:
            file.truncate(100)  # a damaged archive
        server.poll_now()
        client = Client(server.port)
        status, probabilities = _probabilities(client, x)
        assert status == 200 and np.array_equal(probabilities, expected)
        entries = {e["version"]: e for e in client.get("/v1/models/tiny")[1]["model_version_status"]}
        assert entries[str(V1)]["state"] == "AVAILABLE"
        assert entries["7"]["state"] == "END" and entries["7"]["status"]["error_code"] == "UNKNOWN"
        assert entries["7"]["status"]["error_message"].startswith("Version 7 failed to load and is not served: ")
        status, body, _ = client.post("/v1/models/tiny/versions/7:predict", {"inputs": {"x": x.tolist()}})
        assert status == 404 and body["error"].startswith("Servable not found for request: Specific(tiny, 7); it failed to load")
        assert client.get("/v2/models/tiny/versions/7/ready")[0] == 400
