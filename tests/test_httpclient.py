"""The plant's one HTTP client against a real server on loopback: the secret sent, errors in
one line, reads retried only when nothing answered."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tickplant import httpclient, internal
from tickplant.config import Settings


class _Views(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.startswith("/echo"):
            self._answer(200, {"path": self.path, "secret": self.headers.get(internal.HEADER)})
        elif self.path == "/refused":
            self._answer(400, {"error": "no such table: 'trad'\n(did you mean trade?)"})
        else:
            body = ("<html>\n" + "x" * 1000 + "\n</html>").encode()
            self.send_response(502)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def _answer(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Views)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_the_secret_and_the_query_are_sent(server, tmp_path):
    settings = Settings(data_dir=tmp_path, internal_secret="s3cret")
    got = httpclient.get_json(f"{server}/echo", params={"syms": "AAPL,IBM", "date": None}, settings=settings)
    assert got == {"path": "/echo?syms=AAPL%2CIBM", "secret": "s3cret"}
    assert httpclient.get_json(f"{server}/echo")["secret"] is None  # no settings: no secret


def test_a_refusal_is_one_line_with_the_services_reason(server):
    with pytest.raises(httpclient.HttpError) as err:
        httpclient.request("GET", f"{server}/refused")
    assert err.value.status == 400
    assert str(err.value) == f"GET {server}/refused: 400 no such table: 'trad' (did you mean trade?)"
    with pytest.raises(httpclient.HttpError) as err:
        httpclient.request("GET", f"{server}/html")
    assert err.value.status == 502 and "\n" not in str(err.value)
    assert len(err.value.reason) == httpclient.REASON_CHARS
    answer = httpclient.request("GET", f"{server}/refused", check=False)  # the caller reads the status
    assert answer.status == 400 and answer.json()["error"].startswith("no such table")


def test_nothing_answering_is_one_line_after_the_retries():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(httpclient.HttpError) as err:
        httpclient.request("GET", f"http://127.0.0.1:{port}/x", retries=2, timeout=1)
    assert err.value.status is None and "\n" not in str(err.value)
    assert str(err.value).startswith(f"GET http://127.0.0.1:{port}/x: no answer (")
