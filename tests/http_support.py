"""A file server on 127.0.0.1 for the download tests: serves a folder, honours HTTP Range
requests (switchable), records every request, and can fail on demand."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace


@contextlib.contextmanager
def file_server(root: str | Path) -> Iterator[SimpleNamespace]:
    """Serve ``root`` on 127.0.0.1 until the block ends; stopped by its own shutdown.

    Yields ``base`` (http://127.0.0.1:PORT), ``requests`` (path, Range header) and ``state``:
    ``ranges`` (answer Range requests with 206), ``fail`` (a status code to answer every
    request with, e.g. 503), ``cut`` (send only this many bytes of a body, then close).
    """
    requests: list[tuple[str, str | None]] = []
    state: dict = {"ranges": True, "fail": None, "cut": None}

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):  # noqa: N802 - http.server's naming
            requests.append((self.path, self.headers.get("Range")))
            if state["fail"]:
                self.send_error(state["fail"])
                return
            path = Path(self.translate_path(self.path))
            if not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            start, rng = 0, self.headers.get("Range")
            if rng and state["ranges"]:
                start = int(rng.split("=")[1].split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            body = data[start:]
            if state["cut"] is not None:
                body = body[:state["cut"]]
                self.close_connection = True
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(base=f"http://127.0.0.1:{server.server_address[1]}",
                              requests=requests, state=state)
    finally:
        server.shutdown()
        server.server_close()
