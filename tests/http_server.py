"""A local HTTP file server for the fetch tests (the `server` fixture of tests/conftest.py): never the network."""

import http.server
import io
import zipfile
from pathlib import Path


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves files from `root`; honours `Range: bytes=N-` like a real file server."""

    root: Path
    requests: list

    def do_GET(self):  # noqa: N802 - http.server API
        path = self.root / self.path.lstrip("/")
        self.requests.append((self.path, self.headers.get("Range")))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            data = data[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def zip_bytes(members: dict) -> bytes:
    """A zip archive in memory holding {member name: bytes} (names may be hostile, e.g. "../x")."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()
