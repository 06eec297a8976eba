"""A counting HTTP proxy for a moto server: every AWS request the command line sends is seen
and classified at the wire, independently of the tool's own call ledger."""
from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from orchestrator.aws import is_mutating


def operation(method: str, path: str, headers, body: bytes) -> tuple[str, str]:
    """(service, operation) of a request: JSON protocols name it in X-Amz-Target, query protocols
    in the Action parameter; REST protocols (S3, EFS) are named by method and path."""
    target = headers.get("X-Amz-Target")
    if target:
        service, _, op = target.rpartition(".")
        return service.split("_")[0], op
    auth = headers.get("Authorization", "")
    service = auth.split("Credential=")[1].split("/")[3] if "Credential=" in auth else "?"
    if body and b"Action=" in body:
        params = urllib.parse.parse_qs(body.decode(errors="replace"))
        return service, params.get("Action", ["?"])[0]
    return service, f"{method} {urllib.parse.urlsplit(path).path}"


def mutating(method: str, op: str) -> bool:
    if " " in op:  # a REST request: reads are GET and HEAD
        return method not in ("GET", "HEAD")
    return is_mutating(op)


@dataclass(frozen=True)
class Span:
    """One request as the proxy saw it: arrival and response sent (`time.perf_counter` seconds)."""
    start: float
    end: float
    service: str
    operation: str


class CountingProxy:
    """Forwards everything to `upstream` and keeps a list of (service, operation, mutating), and
    beside it each answered request's `Span`.
    `delay` adds latency to every request, as a far-away AWS endpoint would (and makes a run
    last long enough to race against)."""

    def __init__(self, upstream: str, delay: float = 0.0):
        self.upstream = urllib.parse.urlsplit(upstream)
        self.requests: list[tuple[str, str, bool]] = []
        self.spans: list[Span] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # The answer goes out in two writes (headers, body): with Nagle's algorithm on, the body
            # waits for the client's delayed ACK of the headers (~40 ms on Linux) on every reused
            # connection, a stall after the span ends that no AWS endpoint adds.
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def _forward(self):
                arrived = time.perf_counter()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if len(body) < length:  # the client died while sending: AWS would never see this request
                    self.close_connection = True
                    return
                time.sleep(delay)
                service, op = operation(self.command, self.path, self.headers, body)
                with proxy._lock:
                    proxy.requests.append((service, op, mutating(self.command, op)))
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = proxy.upstream.netloc
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                conn.close()
                with proxy._lock:
                    proxy.spans.append(Span(arrived, time.perf_counter(), service, op))

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.spans.clear()

    def count(self, *, mutating: bool | None = None, exclude: tuple[str, ...] = ()) -> int:
        return sum(1 for service, _, is_mut in self.requests
                   if (mutating is None or is_mut == mutating) and service not in exclude)

    def operations(self, *, mutating: bool | None = None) -> Counter:
        return Counter(f"{s}:{op}" for s, op, m in self.requests if mutating is None or m == mutating)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
