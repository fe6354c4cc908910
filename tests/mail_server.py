"""A mail server on 127.0.0.1, in this process, that refuses every login and quotes it back: the
kind of error text that would carry the SMTP password into a stored error if nothing redacted it."""

import base64
import socketserver
import threading


class RefusingMailServer:
    def __init__(self):
        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                self.wfile.write(b"220 test ESMTP\r\n")
                for line in self.rfile:
                    verb = line.split(b" ", 1)[0].strip().upper()
                    if verb in (b"EHLO", b"HELO"):
                        reply = b"250-test\r\n250 AUTH PLAIN"
                    elif verb == b"AUTH":
                        given = base64.b64decode(line.split()[2]).replace(b"\0", b" ").strip()
                        reply = b"535 5.7.8 login refused: " + given
                    elif verb == b"QUIT":
                        self.wfile.write(b"221 bye\r\n")
                        return
                    else:
                        reply = b"502 not here"
                    self.wfile.write(reply + b"\r\n")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_address[1]

    def close(self):
        self.server.shutdown()
        self.server.server_close()
