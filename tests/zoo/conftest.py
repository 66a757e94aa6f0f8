"""Fixtures of the zoo tests: a real HTTP server on 127.0.0.1 and a
temporary weights registry."""

import functools
import http.server
import json
import threading

import pytest

from zoo import weights as weights_lib


class _FileServer:
    """Serves files from `root` on 127.0.0.1 and counts the requests."""

    def __init__(self, root):
        self.root = root
        self.requests = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append(self.path)
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def file_server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    server = _FileServer(root)
    yield server
    server.close()


@pytest.fixture
def weights_cache(tmp_path, monkeypatch):
    """An empty download cache, and no mirror."""
    monkeypatch.setenv("KERAS_GN_WEIGHTS_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("KERAS_GN_WEIGHTS_MIRROR", raising=False)
    return tmp_path / "cache" / "keras_gn_weights"


@pytest.fixture
def registry_with(tmp_path, monkeypatch):
    """Replaces the registry by the given entries (dicts as in the JSON)."""

    def install(*entries):
        path = tmp_path / "registry.json"
        path.write_text(json.dumps(list(entries)))
        monkeypatch.setattr(weights_lib, "REGISTRY_FILE", path)
        weights_lib.registry.cache_clear()

    yield install
    weights_lib.registry.cache_clear()


def entry(tag, **fields):
    """A registry record with neutral defaults."""
    record = dict(
        tag=tag, format="keras", source="tests", license="none", dataset="imagenet-1k",
        classes=1000, metric={}, input_size=224, crop_pct=0.875,
        preprocessing=dict(color="RGB", scale=255.0, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]),
    )
    record.update(fields)
    return record
