"""A local stand-in for raw.githubusercontent.com: serves benchmark files in the upstream layout.

``OWNER/REPO/COMMIT/PATH`` URLs map to the files of a data directory in modetune's layout (``../shared/data``
or a fetched cache), as `modetune.data.fetch.DATA_FILES` pins them. Faults can be injected per URL path
(``"drop"``: send half the bytes, then close the connection; ``"corrupt"``: same length, one byte changed;
``"missing"``: 404). Only 127.0.0.1 is bound.

    python -m tests.data.mirror ../shared/data --port 8765   # then MODETUNE_DATA_URL=http://127.0.0.1:8765
"""

from __future__ import annotations

import argparse
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

from modetune.data.fetch import DATA_FILES, SOURCES, DataFile


def upstream_path(spec: DataFile) -> str:
    src = SOURCES[spec.source]
    return f"/{src.repo}/{src.commit}/{spec.upstream}"


class MirrorServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: dict[str, Path], port: int = 0):
        self.files = files
        self.faults: dict[str, str] = {}
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", port), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: MirrorServer

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        path = urlparse(self.path).path
        self.server.requests.append(path)
        fault = self.server.faults.get(path)
        source = self.server.files.get(path)
        if source is None or fault == "missing" or not source.is_file():
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        body = source.read_bytes()
        if fault == "corrupt":
            body = body[:-2] + bytes([body[-2] ^ 1]) + body[-1:]
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if fault == "drop":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


def mirror_files(data_dir: Path, specs=DATA_FILES) -> dict[str, Path]:
    """URL path -> local file, for every pinned file."""
    return {upstream_path(s): Path(data_dir) / s.local for s in specs}


def start(files: dict[str, Path], port: int = 0) -> MirrorServer:
    server = MirrorServer(files, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    server = MirrorServer(mirror_files(args.data_dir), args.port)
    print(f"serving {args.data_dir} as {server.url}/OWNER/REPO/COMMIT/PATH", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
