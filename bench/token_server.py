#!/usr/bin/env python3
"""A tiny OAuth2 token endpoint for bench/run.sh (client_credentials, short-lived tokens).

POST /token  -> {"access_token": "<random 800 chars>", "token_type": "Bearer", "expires_in": TTL}
GET  /count  -> the number of token requests answered so far (plain text)

Usage: token_server.py PORT [TTL_SECONDS]   (TTL default 1). Listens on 127.0.0.1 only.
Threaded, HTTP/1.1 keep-alive. Nothing is checked: any client id and secret get a token.
"""
import http.server
import json
import secrets
import string
import sys
import threading

ALPHABET = string.ascii_letters + string.digits
COUNT = 0
LOCK = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        global COUNT
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path.split("?")[0] != "/token":
            return self._send(404, b'{"error":"not_found"}', "application/json")
        token = "".join(secrets.choice(ALPHABET) for _ in range(800))
        with LOCK:
            COUNT += 1
        body = json.dumps(
            {"access_token": token, "token_type": "Bearer", "expires_in": self.server.ttl}
        ).encode()
        self._send(200, body, "application/json")

    def do_GET(self):
        if self.path == "/count":
            with LOCK:
                n = COUNT
            return self._send(200, str(n).encode(), "text/plain")
        self._send(404, b"not found", "text/plain")


def main():
    port = int(sys.argv[1])
    ttl = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.ttl = ttl
    server.serve_forever()


if __name__ == "__main__":
    main()
