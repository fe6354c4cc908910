"""A webhook target on 127.0.0.1, in this process, for the delivery tests (in-process and by the worker)."""

import time

from bench.common import QuietHandler, serve_in_thread, stop_serving


class Receiver:
    """Answers each call with the next step of its script, the last one repeated, and records each
    call. A step is a status, "redirect", or "hang": 200 after longer than the tests' timeouts."""

    def __init__(self, script=(200,)):
        self.script = list(script)
        self.calls = []
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((dict(self.headers), body))
                step = receiver.script.pop(0) if len(receiver.script) > 1 else receiver.script[0]
                if step == "hang":
                    time.sleep(3)
                    step = 200
                if step == "redirect":
                    self.send_response(302)
                    self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                    self.end_headers()
                    return
                self.send_response(step)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server, url = serve_in_thread(Handler)
        self.url = f"{url}/hook"

    def close(self):
        stop_serving(self.server)
