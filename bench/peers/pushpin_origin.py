#!/usr/bin/env python3
"""Tiny GRIP origin for the pushpin benchmark peer (stdlib only).

GET /stream/{channel} -> 200 text/event-stream with
    Grip-Hold: stream
    Grip-Channel: {channel}
and an empty body, so pushpin keeps the client connection open and forwards
whatever is later published to {channel} (POST to pushpin's /publish/).

GET /            -> 200 "pushpin origin" (health check)
anything else    -> 404

Usage: pushpin_origin.py [PORT]   (binds 127.0.0.1 only; default 8082)
"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

PREFIX = "/stream/"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive towards pushpin/zurl
    server_version = "pushpin-origin"

    def version_string(self):
        return self.server_version

    def _reply(self, status, headers, body=b""):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        path = urlsplit(self.path).path
        if path.startswith(PREFIX) and len(path) > len(PREFIX):
            channel = unquote(path[len(PREFIX):])
            self._reply(
                200,
                [
                    ("Content-Type", "text/event-stream"),
                    ("Cache-Control", "no-cache"),
                    ("Grip-Hold", "stream"),
                    ("Grip-Channel", channel),
                ],
            )
        elif path == "/":
            self._reply(200, [("Content-Type", "text/plain")], b"pushpin origin\n")
        else:
            self._reply(404, [("Content-Type", "text/plain")], b"not found\n")

    do_HEAD = do_GET

    def log_message(self, format, *args):  # no per-request logging
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 4096


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8082
    httpd = Server(("127.0.0.1", port), Handler)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
