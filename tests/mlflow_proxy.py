"""A loopback HTTP proxy in front of the real test MLflow server.

It forwards everything unchanged, and lets a test make MLflow refuse credentials (403),
fail (503), hang up without an answer, or hold a call (to kill a worker while it is inside the
MLflow write, or to keep an apply inside one call for longer than its lease). It also counts
the writes that reach MLflow. It stands in for faults we cannot cause in MLflow itself; every
answer it forwards comes from the real server.
"""

from __future__ import annotations

import threading

import requests

from bench.common import QuietHandler, serve_in_thread, stop_serving


class MlflowProxy:
    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        # pass | deny | down (503) | hangup (closes the connection unanswered: MLflow unreachable)
        self.mode = "pass"
        self.hold_paths: tuple[str, ...] = ()
        # Hold only calls with this method ("POST": the alias write, not the alias read).
        self.hold_method: str | None = None
        # A held call that is released is dropped, never reaching MLflow: the worker died
        # before its write was sent.
        self.drop_held = False
        self.held = threading.Event()  # set when a held call arrived
        self.release = threading.Event()
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(QuietHandler):
            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                with proxy._lock:
                    proxy.calls.append((self.command, path))
                if proxy.mode == "deny":
                    return self._reply(
                        403, b'{"error_code": "PERMISSION_DENIED", "message": "Permission denied"}'
                    )
                if proxy.mode == "down":
                    return self._reply(503, b"Service Unavailable")
                if proxy.mode == "hangup":
                    self.close_connection = True
                    return self.connection.close()
                if any(path.endswith(p) for p in proxy.hold_paths) and proxy.hold_method in (
                    None,
                    self.command,
                ):
                    proxy.held.set()
                    proxy.release.wait(120)
                    if proxy.drop_held:
                        with proxy._lock:
                            proxy.calls.remove((self.command, path))  # it never reached MLflow
                        return self._reply(503, b"Service Unavailable")
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")
                }
                upstream = requests.request(
                    self.command, proxy.upstream + self.path, data=body, headers=headers, timeout=60
                )
                self._reply(upstream.status_code, upstream.content, upstream.headers.get("Content-Type"))

            def _reply(self, status, content, content_type="application/json"):
                self.send_response(status)
                self.send_header("Content-Type", content_type or "application/json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PATCH = do_DELETE = _handle

        self.server, self.url = serve_in_thread(Handler)

    def writes(self, suffix: str) -> int:
        with self._lock:
            return sum(1 for method, path in self.calls if method != "GET" and path.endswith(suffix))

    def close(self) -> None:
        self.release.set()
        stop_serving(self.server)
