"""Shared test set-up: seeds, the `gpu` marker skipped on machines without CUDA, and a local HTTP
file server for the fetch tests."""

import http.server
import threading

import pytest
import torch

from tests.http_server import RangeHandler


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def pytest_configure(config):
    # Without a GPU the Triton kernels run in Triton's interpreter; it must be switched on before
    # anything imports them, whichever test module comes first.
    import os

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def server(tmp_path):
    """(root folder served, base URL, list of (path, Range header) requests) of a 127.0.0.1 file server thread."""
    root = tmp_path / "served"
    root.mkdir()
    handler = type("H", (RangeHandler,), {"root": root, "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", handler.requests
    httpd.shutdown()
    httpd.server_close()
