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
  lib.py https-report RESULTS_DIR OUT_JSON  the same for bench/https.sh
  lib.py summary OUT_DIR STARTED LOAD_START LOAD_END REVISION
                                          bench/all.sh's combined table from bench/out
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
    extra = ""
    if r.get("cpu_s") is not None and r["requests"]:
        extra += f"  cpu {r['cpu_s'] * 1e6 / r['requests']:.1f} µs/req"
    if r.get("origin_conns") is not None:
        extra += f"  origin conns {r['origin_conns']}"
    print(f"    {r.get('target', ''):<13} {fmt(r['rps'], '%10.0f')} req/s  p50 {fmt(r['p50_ms'], '%7.3f')} ms"
          f"  p99 {fmt(r['p99_ms'], '%7.3f')} ms  errors {r['errors']}  rss {r.get('rss_kib', '-')} KiB{extra}",
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


def read_results(results_dir):
    with open(os.path.join(results_dir, "meta.json")) as f:
        meta = json.load(f)
    load = []
    p = os.path.join(results_dir, "load.jsonl")
    if os.path.exists(p):
        with open(p) as f:
            load = [json.loads(line) for line in f if line.strip()]
    return meta, load


def cpu_us(run):
    return run["cpu_s"] * 1e6 / run["requests"] if run.get("cpu_s") is not None and run["requests"] else None


def summarize(load, section, targets, baseline="nginx"):
    """One entry per body x connections x target: the run with the median req/s (its
    latencies go with it), the median CPU per request of the rounds, and the origin's new
    connections per 10,000 requests over all rounds."""
    scenarios = []
    for r in load:
        key = (r["body"], r["conns"])
        if r.get("section") == section and key not in scenarios:
            scenarios.append(key)
    summary = []
    for body, conns in scenarios:
        chosen = {}
        for t in targets:
            runs = [r for r in load if r.get("section") == section and r["body"] == body
                    and r["conns"] == conns and r["target"] == t]
            if not runs:
                continue
            r = dict(median_run(runs))
            r["rounds"] = len(runs)
            cpus = [c for c in map(cpu_us, runs) if c is not None]
            r["cpu_us"] = statistics.median(cpus) if cpus else None
            conns_runs = [x for x in runs if x.get("origin_conns") is not None]
            requests = sum(x["requests"] or 0 for x in conns_runs)
            r["origin_conns_per_10k"] = (sum(x["origin_conns"] for x in conns_runs) * 10000 / requests
                                         if conns_runs and requests else None)
            r["errors_all_rounds"] = sum(x["errors"] for x in runs)
            chosen[t] = r
        for t, r in chosen.items():
            summary.append({
                "body": body, "conns": conns, "target": t, "rps": r["rps"],
                "p50_ms": r["p50_ms"], "p90_ms": r["p90_ms"], "p99_ms": r["p99_ms"],
                "errors": r["errors_all_rounds"], "requests": r["requests"], "rss_kib": r.get("rss_kib"),
                "rss_peak_kib": r.get("rss_peak_kib"), "rounds": r["rounds"], "cpu_us": r["cpu_us"],
                "origin_conns_per_10k": r["origin_conns_per_10k"],
                "vs_direct": ratio(r["rps"], chosen.get("direct", {}).get("rps")),
                "vs_nginx": ratio(r["rps"], chosen.get(baseline, {}).get("rps")),
                "vs_caddy": ratio(r["rps"], chosen.get("caddy", {}).get("rps")),
                "p99_vs_nginx": ratio(r["p99_ms"], chosen.get(baseline, {}).get("p99_ms")),
            })
    return scenarios, summary


def print_checks(title, checks):
    if checks:
        print()
        print(f"== {title} ==")
        table(["target", "result", "figures"], [[c, "PASS" if ok else "FAIL", d] for c, ok, d in checks],
              ["<", "<", "<"])


def f1(x):
    return "-" if x is None else f"{x:.1f}"


def https_report(results_dir, out_json):
    meta, load = read_results(results_dir)
    targets, protocols = meta["targets"], meta.get("protocols", {})
    scenarios, summary = summarize(load, "https", targets)
    peers = ("nginx", "haproxy", "caddy")
    print()
    print("== HTTPS to the origin (wrk -> proxy over cleartext, proxy -> origin over TLS 1.3) ==")
    print(f"{meta['date']}, tokenproxy {meta['commit']}, load average {meta['loadavg_start']} at the start, "
          f"{meta['loadavg_end']} at the end; {meta['settings']['rounds']} rounds of "
          f"{meta['settings']['bench_seconds']} s, medians")
    rows = []
    by = {(s["body"], s["conns"], s["target"]): s for s in summary}
    for s in summary:
        best = max((by[(s["body"], s["conns"], p)]["rps"] or 0 for p in peers
                    if (s["body"], s["conns"], p) in by), default=None)
        s["vs_best_peer"] = ratio(s["rps"], best)
        rows.append([s["body"], s["conns"], s["target"], protocols.get(s["target"], "?"), f0(s["rps"]),
                     f3(s["p50_ms"]), f3(s["p99_ms"]), f1(s["cpu_us"]), f1(s["origin_conns_per_10k"]),
                     fr(s["vs_best_peer"]), s["errors"], mib(s["rss_kib"])])
    table(["body", "conns", "target", "upstream", "req/s", "p50 ms", "p99 ms", "CPU µs/req",
           "new conns/10k req", "/best peer", "errors", "RSS MiB"], rows,
          ["<", ">", "<", "<"] + [">"] * 8)
    print("(CPU: user + system time of the target's processes over the run / requests, median of the rounds;"
          " for direct, the origin's. New conns: TLS connections the origin accepted during the runs"
          " (stub_status) per 10,000 requests, all rounds. /best peer: req/s over the best of nginx,"
          " haproxy, caddy. errors: all rounds)")

    checks = []
    for body, conns in scenarios:
        cell = [by[(body, conns, p)] for p in peers if (body, conns, p) in by]
        for name in ("tokenproxy", "tokenproxy-h1"):
            tp = by.get((body, conns, name))
            if not tp or not cell:
                continue
            best_rps = max(cell, key=lambda s: s["rps"] or 0)
            best_p99 = min(cell, key=lambda s: s["p99_ms"] or float("inf"))
            fewest = min(cell, key=lambda s: s["origin_conns_per_10k"] if s["origin_conns_per_10k"] is not None
                         else float("inf"))
            label = f"{name} ({body}, {conns} conns)"
            checks.append((f"req/s >= best peer: {label}", tp["rps"] >= best_rps["rps"],
                           f"{f0(tp['rps'])} vs {best_rps['target']} {f0(best_rps['rps'])}"))
            checks.append((f"p99 <= best peer: {label}", tp["p99_ms"] <= best_p99["p99_ms"],
                           f"{f3(tp['p99_ms'])} vs {best_p99['target']} {f3(best_p99['p99_ms'])} ms"))
            if tp["origin_conns_per_10k"] is not None and fewest["origin_conns_per_10k"] is not None:
                checks.append((f"new origin conns <= fewest of peers: {label}",
                               tp["origin_conns_per_10k"] <= fewest["origin_conns_per_10k"],
                               f"{f1(tp['origin_conns_per_10k'])} vs {fewest['target']} "
                               f"{f1(fewest['origin_conns_per_10k'])} per 10k"))
    print_checks("Targets from issue 23, item 1", checks)
    results = dict(meta)
    results.update({"load": summary, "load_runs": [r for r in load if r.get("section") == "https"],
                    "targets_checked": [{"target": c, "pass": bool(ok), "figures": d} for c, ok, d in checks]})
    os.makedirs(os.path.dirname(out_json), exist_ok=True)
    with open(out_json, "w") as f:
        json.dump(results, f, indent=2)
    print()
    print(f"machine-readable results: {out_json}")


def report(results_dir, out_json):
    meta, load = read_results(results_dir)
    targets = meta["targets"]
    scenarios, summary = summarize(load, "load", targets)

    print()
    print("== Throughput and latency (wrk --latency; median of rounds by req/s) ==")
    print(f"{meta.get('date')}, tokenproxy {meta.get('versions', {}).get('tokenproxy')}, load average "
          f"{meta.get('loadavg_start')} at the start, {meta.get('loadavg_end')} after the load runs")
    rows = [[s["body"], s["conns"], s["target"], f0(s["rps"]), f3(s["p50_ms"]), f3(s["p99_ms"]),
             f1(s["cpu_us"]), fr(s["vs_direct"]), fr(s["vs_nginx"]), fr(s["vs_caddy"]), fr(s["p99_vs_nginx"]),
             s["errors"], mib(s["rss_kib"])]
            for s in summary]
    table(["body", "conns", "target", "req/s", "p50 ms", "p99 ms", "CPU µs/req", "/direct", "/nginx",
           "/caddy", "p99/nginx", "errors", "RSS MiB"], rows, ["<", ">", "<"] + [">"] * 10)
    print("(CPU: user + system time of the target's processes over the run / requests, median of the "
          "rounds; RSS: the target's processes at the end of the run, nginx = master + worker; "
          "for direct, the origin's; errors: all rounds)")

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
        cd = by.get((body, conns, "caddy"))
        if tp and ng and conns >= 16:
            want = 0.97 if body == "small" else 1.0
            checks.append((f"req/s >= {want:.2f} x nginx ({body}, {conns} conns)", tp["rps"] >= want * ng["rps"],
                           f"{f0(tp['rps'])} vs {f0(ng['rps'])} ({fr(ratio(tp['rps'], ng['rps']))} x)"))
        if tp and cd:
            checks.append((f"req/s >= caddy ({body}, {conns} conns)", tp["rps"] >= cd["rps"],
                           f"{f0(tp['rps'])} vs {f0(cd['rps'])} ({fr(ratio(tp['rps'], cd['rps']))} x)"))
    if idle and "tokenproxy" in idle:
        v = idle["tokenproxy"].get("start")
        if v:
            checks.append(("idle RSS <= 10 MiB", v <= 10 * 1024,
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
    print_checks("Targets from issue 23, items 3 and 5 (ratios from this run)", checks)

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


def summary(out_dir, started, load_start, load_end, revision):
    """bench/all.sh: one table from https.json and results.json, then every target checked,
    then the egress table and the instruction counts as the scripts printed them."""
    def read(name):
        path = os.path.join(out_dir, name)
        return json.load(open(path)) if os.path.exists(path) else {}
    https, clear = read("https.json"), read("results.json")
    protocols = https.get("protocols", {})
    cells = {}
    for source, data in (("https", https), ("clear", clear)):
        for s in data.get("load", []):
            cells.setdefault((s["body"], s["conns"], s["target"]), {})[source] = s
    order = {t: i for i, t in enumerate(["direct", "nginx", "haproxy", "caddy", "mitmproxy",
                                         "tokenproxy", "tokenproxy-h1"])}
    print(f"tokenproxy benchmarks (bench/all.sh), {started}; tokenproxy {revision}; "
          f"{os.cpu_count()} CPUs; load average {load_start} at the start, {load_end} at the end")
    print()
    print("== req/s, p99 and CPU per request; HTTPS: proxy -> origin over TLS 1.3, cleartext: over TCP ==")
    rows = []
    for (body, conns, target) in sorted(cells, key=lambda k: (k[0] != "small", k[1], order.get(k[2], 99))):
        h, c = cells[(body, conns, target)].get("https"), cells[(body, conns, target)].get("clear")
        rows.append([body, conns, target,
                     f0(h["rps"]) if h else "", f3(h["p99_ms"]) if h else "", f1(h["cpu_us"]) if h else "",
                     f1(h["origin_conns_per_10k"]) if h else "", protocols.get(target, "") if h else "",
                     f0(c["rps"]) if c else "", f3(c["p99_ms"]) if c else "", f1(c["cpu_us"]) if c else ""])
    table(["body", "conns", "target", "HTTPS req/s", "p99 ms", "CPU µs/req", "new conns/10k",
           "upstream", "cleartext req/s", "p99 ms", "CPU µs/req"], rows, ["<", ">", "<"] + [">"] * 4 + ["<"] + [">"] * 3)
    print("(medians of the rounds; CPU = user + system time of the target's processes / requests, for"
          " direct the origin's; new conns = TLS connections the origin accepted per 10,000 requests)")
    print_checks("Targets", [("HTTPS: " + c["target"], c["pass"], c["figures"])
                             for c in https.get("targets_checked", [])]
                 + [("cleartext: " + c["target"], c["pass"], c["figures"]) for c in clear.get("targets", [])])
    for name, title in (("egress.txt", "Egress mode against an nginx TLS reverse proxy (bench/egress.sh)"),
                        ("instructions.txt", "Instructions per request (bench/instructions.sh)"),
                        ("instructions-https.txt",
                         "Instructions per request over TLS (INSTR_ORIGIN=https bench/instructions.sh)")):
        path = os.path.join(out_dir, name)
        if os.path.exists(path):
            print()
            print(f"== {title} ==")
            print(open(path).read().rstrip())


def callgrind_functions(path, requests):
    """Own (exclusive) instructions per request from a callgrind_annotate listing: the program
    total, {function: instructions} and {crate or library: instructions}."""
    total, functions, libraries = 0, {}, {}
    for line in open(path):
        match = re.match(r"\s*([\d,]+) \([^)]*\)\s+(.*)", line)
        if not match:
            continue
        count, where = int(match.group(1).replace(",", "")) / requests, match.group(2)
        if "PROGRAM TOTALS" in where:
            total = count
            continue
        # "file:function [binary]" (the binary only where it changes): the function without the
        # hash Rust adds.
        file, _, rest = where.partition(":")
        function, _, binary = rest.rpartition(" [")
        function = re.sub(r"::h[0-9a-f]{16}$", "", function or binary)
        library = library_of(function, file, os.path.basename(binary.rstrip("]")) if function != binary else "")
        functions[function] = functions.get(function, 0) + count
        libraries[library] = libraries.get(library, 0) + count
    return total, functions, libraries


def library_of(function, file, binary):
    """Whose code it is: the crate of a Rust function (its path's first segment; core, alloc
    and std as "std"); for C and assembly, the crate whose sources hold it (ring's, with line
    tables), else "libc" for glibc's sources, else the binary."""
    name = re.sub(r"^(<|&|\*|\(|mut |dyn |const )+", "", function)
    name = re.sub(r"^[A-Za-z_][A-Za-z0-9_]* as <?", "", name)   # <T as core::..>::f: the trait's crate
    if "::" in name:
        crate = re.match(r"[A-Za-z_][A-Za-z0-9_]*", name)
        crate = crate.group(0) if crate else name.split("::")[0]
        return "std" if crate in ("core", "alloc", "std") else crate
    registry = re.search(r"/registry/src/[^/]+/([A-Za-z0-9_-]+?)-\d+\.\d+", file)
    if registry:
        return registry.group(1).replace("-", "_")
    if name.startswith("ring_core_"):
        return "ring"
    if file.startswith("./") or binary.startswith("libc.so"):
        return "libc"
    return binary or "other"


def instructions(tmp, origin, top, commit, connections):
    """bench/instructions.sh: instructions per request of each measured proxy, each one's split
    by crate or library, then (http) the functions that differ most from bench/floor or
    (https) tokenproxy's top functions."""
    requests = {}
    for line in open(os.path.join(tmp, "requests.txt")):
        name, count = line.split()
        requests[name] = int(count)
    measured = {name: callgrind_functions(os.path.join(tmp, name + ".txt"), count)
                for name, count in requests.items()}
    names = list(requests)
    where = "the cleartext origin" if origin == "http" else "the TLS 1.3 origin"
    print(f"instructions per request (callgrind, wrk -t1 -c{connections} to /o/small through {where},"
          f" commit {commit})")
    for name in names:
        print(f"  {name:<14} {measured[name][0]:>10,.0f}   ({requests[name]} requests)")
    first, last = names[0], names[-1]
    target = "   (target <= 1.20)" if origin == "http" else ""
    print(f"  {first} / {last}  {measured[first][0] / measured[last][0]:.2f}{target}")
    libraries = {}
    for name in names:
        for library, count in measured[name][2].items():
            libraries.setdefault(library, {})[name] = count
    # Cleartext: sorted by what tokenproxy spends beyond the floor; HTTPS: by the largest.
    order = (lambda lib: -(libraries[lib].get(first, 0) - libraries[lib].get(last, 0))) if origin == "http" \
        else (lambda lib: -max(libraries[lib].values()))
    print("\nown instructions per request by crate (Rust) or library (C):")
    table(["crate or library"] + names,
          [[lib] + [f0(libraries[lib].get(name, 0)) for name in names]
           for lib in sorted(libraries, key=order)[:top] if max(libraries[lib].values()) >= 0.5],
          ["<"] + [">"] * len(names))
    if origin == "http":
        tp, floor = measured[first][1], measured[last][1]
        print(f"\nfunctions by difference of own instructions per request ({first} - {last}), top {top}:")
        rows = sorted(set(tp) | set(floor), key=lambda k: -(tp.get(k, 0) - floor.get(k, 0)))[:top]
        for key in rows:
            print(f"  {tp.get(key, 0) - floor.get(key, 0):>+9,.0f}  {tp.get(key, 0):>8,.0f} {floor.get(key, 0):>8,.0f}"
                  f"  {key[:110]}")
        return
    functions = measured[first][1]
    print(f"\n{first}: top {top} functions by own instructions per request:")
    for function in sorted(functions, key=lambda f: -functions[f])[:top]:
        print(f"  {functions[function]:>8,.0f}  {function[:110]}")

def hold(port, n, seconds=3.0):
    """Opens n keep-alive connections to 127.0.0.1:port, each with one answered GET of
    /o/small, prints when all are answered, and keeps them open for `seconds`."""
    held = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /o/small HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                sys.exit("connection closed before an answer")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(body) < length:
            body += s.recv(65536)
        held.append(s)
    print("held", len(held), flush=True)
    time.sleep(seconds)


def dhat_top(path, connections, top):
    """The heap at DHAT's global peak per connection, and the allocation sites holding the
    most of it, each named by its first frames outside the allocator."""
    d = json.load(open(path))
    frames = d["ftbl"]
    sites = sorted(d["pps"], key=lambda p: -p.get("gb", 0))
    total = sum(p.get("gb", 0) for p in sites)
    print("    heap at its peak: %.1f KiB per connection" % (total / connections / 1024))
    skip = ("vgpreload", "library/std/src/sys/alloc", "library/std/src/alloc.rs",
            "library/alloc/src/", "bytes_mut.rs", "bytes-1.", "[root]")
    for site in sites[:top]:
        named = [frames[i] for i in site["fs"] if not any(s in frames[i] for s in skip)]
        where = " <- ".join(f.split(": ", 1)[-1][:90] for f in named[:2])
        print("    %7.0f B per connection  %s" % (site.get("gb", 0) / connections, where))


def main():
    cmd = sys.argv[1]
    if cmd == "ports":
        ports(int(sys.argv[2]))
    elif cmd == "hold":
        hold(int(sys.argv[2]), int(sys.argv[3]))
    elif cmd == "dhat-top":
        dhat_top(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
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
    elif cmd == "https-report":
        https_report(sys.argv[2], sys.argv[3])
    elif cmd == "instructions":
        instructions(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6])
    elif cmd == "summary":
        summary(*sys.argv[2:7])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
