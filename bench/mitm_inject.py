"""mitmproxy addon for bench/: the header injection people script when no tool exists.

    mitmdump --mode reverse:https://vendor.example -s bench/mitm_inject.py

Sets `Authorization: Bearer <token>` (the token read from $BENCH_TOKEN_FILE) and
`Organization: acme` on every request, strips the `/o` prefix the bench's proxies are
reached at, and with $BENCH_UPSTREAM_HOST set, sends that name as the upstream's TLS SNI
(verified against the certificate) and Host while connecting to the address in --mode.
"""

import os

from mitmproxy import http
from mitmproxy.proxy import server_hooks

with open(os.environ["BENCH_TOKEN_FILE"]) as f:
    AUTHORIZATION = "Bearer " + f.read().strip()
HOST = os.environ.get("BENCH_UPSTREAM_HOST") or None
PREFIX = "/o/"


def server_connect(data: server_hooks.ServerConnectionHookData) -> None:
    if HOST:
        data.server.sni = HOST


def request(flow: http.HTTPFlow) -> None:
    request = flow.request
    if request.path.startswith(PREFIX):
        request.path = request.path[len(PREFIX) - 1:]
    request.headers["Authorization"] = AUTHORIZATION
    request.headers["Organization"] = "acme"
    if HOST:
        request.headers["Host"] = HOST
