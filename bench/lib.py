#!/usr/bin/env python3
"""Helpers for bench/run.sh (standard library only).

  lib.py ports N                          N free loopback TCP ports, one a line
  lib.py stream-origin PORT               sink/source origin for the 1 GiB streaming runs:
                                            PUT/POST anything -> reads and discards the body
                                            (Content-Length or chunked), answers the byte count
                                            GET /download?bytes=N -> N zero bytes
  lib.py startup PORT RUNS -- CMD...      exec CMD RUNS times; ms from exec to GET /-/ready = 200
                                          on PORT; prints one number a line
  lib.py record JSONL KEY=VALUE... wrk=FILE
                                          parses a `wrk --latency` output file and appends one
                                          JSON record (the KEY=VALUE pairs plus the figures)
  lib.py put JSON KEY VALUE               sets results[KEY] = VALUE (VALUE is JSON) in a JSON file
  lib.py report RESULTS_DIR OUT_JSON      prints the tables and writes the machine-readable file
"""
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time


# --------------------------------------------------------------------------- ports
def ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    for s in socks:
        print(s.getsockname()[1])
    for s in socks:
        s.close()


# --------------------------------------------------------------------------- stream origin
def stream_origin(port):
    import http.server

    zeros = memoryview(bytes(1 << 20))

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _reply(self, body):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _drain(self):
            total = 0
            buf = bytearray(1 << 20)
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return total
                    left = size
                    while left:
                        got = self.rfile.readinto(memoryview(buf)[: min(left, len(buf))])
                        if not got:
                            return total
                        left -= got
                        total += got
                    self.rfile.readline()
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                got = self.rfile.readinto(memoryview(buf)[: min(left, len(buf))])
                if not got:
                    break
                left -= got
                total += got
            return total

        def do_PUT(self):
            self._reply(str(self._drain()).encode())

        do_POST = do_PUT

        def do_GET(self):
            m = re.search(r"bytes=(\d+)", self.path)
            n = int(m.group(1)) if m else 0
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            while n:
                k = min(n, len(zeros))
                self.wfile.write(zeros[:k])
                n -= k

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


# --------------------------------------------------------------------------- startup
def ready(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /-/ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def startup(port, runs, cmd):
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ms = None
        while time.perf_counter() - t0 < 10:
            if ready(port):
                ms = (time.perf_counter() - t0) * 1000
                break
            if proc.poll() is not None:
                break
            time.sleep(0.0005)
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        print("nan" if ms is None else f"{ms:.2f}", flush=True)


# --------------------------------------------------------------------------- wrk parsing
UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def to_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    return float(m.group(1)) * UNITS[m.group(2)] if m else None


def parse_wrk(text):
    out = {"rps": None, "p50_ms": None, "p75_ms": None, "p90_ms": None, "p99_ms": None,
           "requests": None, "errors": 0, "non_2xx": 0, "socket_errors": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        out["rps"] = float(m.group(1))
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", text, re.M)
        if m:
            out[f"p{pct}_ms"] = to_ms(m.group(1))
    m = re.search(r"(\d+) requests in", text)
    if m:
        out["requests"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["socket_errors"] = sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        out["non_2xx"] = int(m.group(1))
    out["errors"] = out["socket_errors"] + out["non_2xx"]
    return out


def convert(v):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def record(path, pairs):
    rec = {}
    for pair in pairs:
        k, _, v = pair.partition("=")
        if k == "wrk":
            with open(v) as f:
                rec.update(parse_wrk(f.read()))
        else:
            rec[k] = convert(v)
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")
    r = rec
    fmt = lambda x, s: "-" if x is None else s % x  # noqa: E731
    print(f"    {r.get('target', ''):<11} {fmt(r['rps'], '%10.0f')} req/s  p50 {fmt(r['p50_ms'], '%7.3f')} ms"
          f"  p99 {fmt(r['p99_ms'], '%7.3f')} ms  errors {r['errors']}  rss {r.get('rss_kib', '-')} KiB",
          flush=True)


def put(path, key, value):
    data = {}
    if os.path.exists(path):
        with open(path) as f:
            data = json.load(f)
    data[key] = json.loads(value)
    with open(path, "w") as f:
        json.dump(data, f, indent=2)


# --------------------------------------------------------------------------- report
def table(headers, rows, align=None):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    align = align or ["<"] + [">"] * (len(headers) - 1)
    line = lambda cells: "  ".join(f"{str(c):{a}{w}}" for c, a, w in zip(cells, align, widths))  # noqa: E731
    print(line(headers).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r).rstrip())


def f0(x):
    return "-" if x is None else f"{x:,.0f}"


def f3(x):
    return "-" if x is None else f"{x:.3f}"


def ratio(a, b):
    return None if a is None or not b else a / b


def fr(x):
    return "-" if x is None else f"{x:.2f}"


def mib(kib):
    return "-" if kib in (None, "") else f"{kib / 1024:.1f}"


def median_run(runs):
    """The run whose req/s is the median of the rounds (its latencies go with it)."""
    runs = sorted(runs, key=lambda r: r["rps"] or 0)
    return runs[(len(runs) - 1) // 2]


def report(results_dir, out_json):
    with open(os.path.join(results_dir, "meta.json")) as f:
        meta = json.load(f)
    load = []
    p = os.path.join(results_dir, "load.jsonl")
    if os.path.exists(p):
        with open(p) as f:
            load = [json.loads(line) for line in f if line.strip()]

    targets = meta["targets"]
    scenarios = []
    for r in load:
        key = (r["body"], r["conns"])
        if r.get("section") == "load" and key not in scenarios:
            scenarios.append(key)

    summary = []
    for body, conns in scenarios:
        chosen = {}
        for t in targets:
            runs = [r for r in load if r.get("section") == "load" and r["body"] == body
                    and r["conns"] == conns and r["target"] == t]
            if runs:
                chosen[t] = median_run(runs)
                chosen[t]["rounds"] = len(runs)
        for t, r in chosen.items():
            summary.append({
                "body": body, "conns": conns, "target": t, "rps": r["rps"],
                "p50_ms": r["p50_ms"], "p90_ms": r["p90_ms"], "p99_ms": r["p99_ms"],
                "errors": r["errors"], "requests": r["requests"], "rss_kib": r.get("rss_kib"),
                "rss_peak_kib": r.get("rss_peak_kib"), "rounds": r["rounds"],
                "vs_direct": ratio(r["rps"], chosen.get("direct", {}).get("rps")),
                "vs_nginx": ratio(r["rps"], chosen.get("nginx", {}).get("rps")),
                "p99_vs_nginx": ratio(r["p99_ms"], chosen.get("nginx", {}).get("p99_ms")),
            })

    print()
    print("== Throughput and latency (wrk --latency; median of rounds by req/s) ==")
    rows = [[s["body"], s["conns"], s["target"], f0(s["rps"]), f3(s["p50_ms"]), f3(s["p99_ms"]),
             fr(s["vs_direct"]), fr(s["vs_nginx"]), fr(s["p99_vs_nginx"]), s["errors"], mib(s["rss_kib"])]
            for s in summary]
    table(["body", "conns", "target", "req/s", "p50 ms", "p99 ms", "/direct", "/nginx",
           "p99/nginx", "errors", "RSS MiB"], rows, ["<", ">", "<"] + [">"] * 8)
    print("(RSS: the target's processes at the end of the run, nginx = master + worker; "
          "for direct, the origin's)")

    extra = meta
    idle = extra.get("idle_rss_kib")
    if idle:
        print()
        print("== RSS at idle (MiB) ==")
        table(["process", "after start", "after load"],
              [[k, mib(v.get("start")), mib(v.get("after_load"))] for k, v in idle.items()])

    stream = extra.get("stream")
    if stream:
        print()
        print(f"== tokenproxy RSS while {stream['mib']} MiB streams through (sampled every 50 ms) ==")
        table(["phase", "RSS peak MiB", "seconds", "MiB/s", "complete"],
              [["idle", mib(stream["idle_kib"]), "-", "-", "-"],
               ["upload", mib(stream["upload_peak_kib"]), f"{stream['upload_s']:.2f}",
                f"{stream['mib'] / stream['upload_s']:.0f}" if stream["upload_s"] else "-",
                "yes" if stream["upload_ok"] else "NO"],
               ["download", mib(stream["download_peak_kib"]), f"{stream['download_s']:.2f}",
                f"{stream['mib'] / stream['download_s']:.0f}" if stream["download_s"] else "-",
                "yes" if stream["download_ok"] else "NO"]])

    startup_ms = extra.get("startup_ms")
    if startup_ms:
        vals = [v for v in startup_ms if v is not None]
        print()
        print("== tokenproxy start-up: exec to /-/ready = 200 (static token) ==")
        if vals:
            print(f"runs {len(startup_ms)}, median {statistics.median(vals):.1f} ms, "
                  f"min {min(vals):.1f} ms, max {max(vals):.1f} ms, failed {len(startup_ms) - len(vals)}")
        else:
            print("every run failed")

    refresh = [r for r in load if r.get("section") == "refresh"]
    ref_summary = []
    if refresh:
        print()
        print("== Token refresh under load (16 connections, small body) ==")
        for mode in ("static", "refresh"):
            runs = [r for r in refresh if r["target"] == mode]
            if runs:
                r = median_run(runs)
                ref_summary.append({"mode": mode, "rps": r["rps"], "p50_ms": r["p50_ms"],
                                    "p99_ms": r["p99_ms"], "errors": sum(x["errors"] for x in runs),
                                    "token_requests": sum(x.get("token_requests", 0) for x in runs)
                                    if mode == "refresh" else None,
                                    "seconds": sum(x.get("seconds", 0) for x in runs),
                                    "rounds": len(runs)})
        base = next((s for s in ref_summary if s["mode"] == "static"), None)
        rows = []
        for s in ref_summary:
            s["p99_vs_static"] = ratio(s["p99_ms"], base["p99_ms"]) if base else None
            s["rps_vs_static"] = ratio(s["rps"], base["rps"]) if base else None
            rows.append([s["mode"], f0(s["rps"]), f3(s["p50_ms"]), f3(s["p99_ms"]), fr(s["rps_vs_static"]),
                         fr(s["p99_vs_static"]), s["errors"],
                         "-" if s["token_requests"] is None else s["token_requests"]])
        table(["token", "req/s", "p50 ms", "p99 ms", "req/s vs static", "p99 vs static",
               "errors (all rounds)", "token requests"], rows)
        print(f"(refresh: client_credentials, expires_in {meta.get('token_ttl', 1)} s from bench/token_server.py; "
              "static: a fresh tokenproxy with a static token, run alternately)")

    # ----- the issue's targets
    checks = []
    by = {(s["body"], s["conns"], s["target"]): s for s in summary}
    for body, conns in scenarios:
        tp = by.get((body, conns, "tokenproxy"))
        ng = by.get((body, conns, "nginx"))
        hp = by.get((body, conns, "haproxy"))
        if tp and hp:
            checks.append((f"req/s >= haproxy ({body}, {conns} conns)", tp["rps"] >= hp["rps"],
                           f"{f0(tp['rps'])} vs {f0(hp['rps'])}"))
        if tp and ng and conns >= 16:
            checks.append((f"req/s >= nginx ({body}, {conns} conns)", tp["rps"] >= ng["rps"],
                           f"{f0(tp['rps'])} vs {f0(ng['rps'])}"))
            checks.append((f"p99 <= nginx ({body}, {conns} conns)", tp["p99_ms"] <= ng["p99_ms"],
                           f"{f3(tp['p99_ms'])} vs {f3(ng['p99_ms'])} ms"))
    if idle and "tokenproxy" in idle:
        v = idle["tokenproxy"].get("start")
        if v:
            checks.append(("idle RSS <= 10 MB", v * 1024 <= 10_000_000,
                           f"{v * 1024 / 1e6:.1f} MB ({v / 1024:.1f} MiB)"))
    if stream:
        peak = max(stream["upload_peak_kib"], stream["download_peak_kib"])
        checks.append(("RSS during the 1 GiB transfers <= 32 MB", peak * 1024 <= 32_000_000
                       and stream["upload_ok"] and stream["download_ok"],
                       f"peak {peak * 1024 / 1e6:.1f} MB ({peak / 1024:.1f} MiB)"))
    if ref_summary and len(ref_summary) == 2:
        s, r = ref_summary
        checks.append(("token refresh every second: 0 failed requests", r["errors"] == 0,
                       f"{r['errors']} errors, {r['token_requests']} token requests"))
        checks.append(("token refresh: p99 within 10 % of no refresh",
                       r["p99_ms"] is not None and s["p99_ms"] and r["p99_ms"] <= s["p99_ms"] * 1.10,
                       f"{f3(r['p99_ms'])} vs {f3(s['p99_ms'])} ms"))
    if startup_ms:
        vals = [v for v in startup_ms if v is not None]
        if vals:
            med = statistics.median(vals)
            checks.append(("exec to ready <= 50 ms (static token)", med <= 50, f"median {med:.1f} ms"))
    if checks:
        print()
        print("== Targets from issue 7 (ratios from this run) ==")
        table(["target", "result", "figures"], [[c, "PASS" if ok else "FAIL", d] for c, ok, d in checks],
              ["<", "<", "<"])

    results = dict(meta)
    results.update({
        "load": summary,
        "load_runs": [r for r in load if r.get("section") == "load"],
        "idle_rss_kib": idle,
        "stream": stream,
        "startup_ms": startup_ms,
        "startup_median_ms": statistics.median([v for v in startup_ms if v is not None])
        if startup_ms and any(v is not None for v in startup_ms) else None,
        "refresh": ref_summary,
        "refresh_runs": refresh,
        "targets": [{"target": c, "pass": bool(ok), "figures": d} for c, ok, d in checks],
    })
    os.makedirs(os.path.dirname(out_json), exist_ok=True)
    with open(out_json, "w") as f:
        json.dump(results, f, indent=2)
    print()
    print(f"machine-readable results: {out_json}")


def main():
    cmd = sys.argv[1]
    if cmd == "ports":
        ports(int(sys.argv[2]))
    elif cmd == "stream-origin":
        stream_origin(int(sys.argv[2]))
    elif cmd == "startup":
        sep = sys.argv.index("--")
        startup(int(sys.argv[2]), int(sys.argv[3]), sys.argv[sep + 1:])
    elif cmd == "record":
        record(sys.argv[2], sys.argv[3:])
    elif cmd == "put":
        put(sys.argv[2], sys.argv[3], sys.argv[4])
    elif cmd == "report":
        report(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
