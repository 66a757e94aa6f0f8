"""Shared test set-up: quiet TensorFlow, the TF backend, a clean dtype
policy; a real HTTP server on 127.0.0.1 and an empty weights cache."""

import functools
import http.server
import os
import threading

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _float32_policy():
    """Every test starts and ends under the float32 policy."""
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture(scope="session")
def gpu_check():
    """benchmarks/gpu/check.py as a module (it is a script, not a package)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
