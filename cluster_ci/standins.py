#!/usr/bin/env python3
"""Stand-in daemons, clients and the capture check for cluster_ci/run.

Daemons (each binds loopback only, so other hosts can reach it only through
mtlsd):
  grpc-server --listen ADDR --host NAME --service database|eventlog
      A real gRPC server (grpcio, HTTP/2). sf.Database/{Get,Put,Delete}
      (unary) and Watch (server streaming: a message every 0.2 s for the
      request's "seconds", default 30), or sf.EventLog/{Append (unary),
      Tail (server streaming, 3 messages)}. Messages are
      JSON bytes (no protobuf: the framing, HTTP/2 and status codes are real
      gRPC). Every reply names the caller identity the server received from
      mtlsd (x-mtlsd-peer-host, x-mtlsd-peer-roles, x-forwarded-client-cert)
      and echoes the request's marker.
  http-server --listen ADDR --host NAME
      An HTTP/1.1 "API" that answers every POST/GET the same way.

Clients (through the local mtlsd outbound listener on loopback):
  call KIND TARGET PATH --marker M --expect-peer HOST [--timeout S]
      One call; prints a JSON line; exit 0 when it succeeded and the callee
      saw HOST as the verified caller, 1 otherwise. KIND: grpc (unary),
      grpc-stream (server streaming), http.
  hold TARGET --out FILE --stop-file F --expect-peer HOST [--stream PATH]
       [--stream-seconds S] [--calls PATH,PATH] [--interval S] [--tls CA,CERT,KEY,NAME]
      One gRPC channel held open for the whole run (never re-opened by this
      client): optionally one long server-streaming call on it (for
      --stream-seconds, default the whole --duration), and every
      --interval seconds a unary call to each of --calls, on the same
      channel. Writes one JSON line per event to FILE (wall-clock time,
      stream messages and the stream's end, each call's status code and
      duration), for the rig to judge what happened when. Plaintext to a
      local outbound listener, or with --tls mTLS straight to a remote
      inbound listener with a host's own certificate (so the channel's one
      TCP connection is the connection that listener judges).
  load --out FILE --duration S --stop-file F --expect-peer HOST SPEC...
      Continuous, bounded load: one thread per SPEC ("KIND,TARGET,PATH"),
      a call every --interval seconds until the stop file exists or
      --duration passes (hard limits on time and count). gRPC threads open a
      new channel every --recycle calls, so new TLS handshakes keep happening
      on the mtlsd legs; http opens a connection per call. Writes a JSON
      summary (ok/failed per spec, the first failures with time and reason).

Analysis:
  first-event FILE SINCE [KEY=VALUE...]
      Prints the time (Unix seconds) of the first JSON line of FILE at or
      after SINCE (Unix seconds) whose fields hold every KEY=VALUE (an mtlsd JSON log, the audit
      log, a hold log); exit 1 when there is none.
  journal-events
      Reads `journalctl -o json` on stdin and writes one JSON event per
      entry (for first-event): "t" from the journal's own time; the fields of
      the message when it is a JSON log line; else "message" and the fields
      of a text log line (`TIME LEVEL target: message key=value ...`, colour
      codes removed), or of mtlsd's native journal entries (`message
      key=value ...`, the message up to the first field), and every journal
      field of the entry (lower-cased, the journal's own underscore fields
      left out).
  pcap-check PCAP --marker M --tls-ports P,P --other-ports P,P
      Reassembles every TCP stream of a capture (Ethernet, IPv4) and checks:
      the marker is in no packet and no reassembled stream; every stream on a
      --tls-ports port is a clean sequence of TLS records from its first byte
      in both directions; no payload on any port outside both lists. Prints
      a JSON summary, exit 0 only if all holds and TLS records were seen.
"""

import argparse
import http.client
import http.server
import json
import os
import signal
import socketserver
import struct
import sys
import threading
import time
from concurrent import futures

PEER_HEADERS = ("x-mtlsd-peer-host", "x-mtlsd-peer-roles", "x-forwarded-client-cert")


def reply_body(host, service, method, headers, request):
    return {
        "callee": host,
        "service": service,
        "method": method,
        "peer_host": headers.get("x-mtlsd-peer-host", ""),
        "peer_roles": headers.get("x-mtlsd-peer-roles", ""),
        "xfcc": bool(headers.get("x-forwarded-client-cert")),
        "marker": request.get("marker", ""),
    }


# --- daemons -----------------------------------------------------------------


def grpc_server(args):
    import grpc

    service = {"database": "sf.Database", "eventlog": "sf.EventLog"}[args.service]

    def unary(method):
        def handle(request, context):
            headers = {k: v for k, v in context.invocation_metadata()}
            body = json.loads(request or b"{}")
            return json.dumps(reply_body(args.host, service, method, headers, body)).encode()

        return grpc.unary_unary_rpc_method_handler(handle)

    def streaming(method):
        def handle(request, context):
            headers = {k: v for k, v in context.invocation_metadata()}
            body = json.loads(request or b"{}")
            for i in range(3):
                out = reply_body(args.host, service, method, headers, body)
                out["seq"] = i
                yield json.dumps(out).encode()

        return grpc.unary_stream_rpc_method_handler(handle)

    def watching(method):
        def handle(request, context):
            headers = {k: v for k, v in context.invocation_metadata()}
            body = json.loads(request or b"{}")
            until = time.monotonic() + float(body.get("seconds", 30))
            seq = 0
            while context.is_active() and time.monotonic() < until:
                out = reply_body(args.host, service, method, headers, body)
                out["seq"] = seq
                seq += 1
                yield json.dumps(out).encode()
                time.sleep(0.2)

        return grpc.unary_stream_rpc_method_handler(handle)

    if args.service == "database":
        handlers = {m: unary(m) for m in ("Get", "Put", "Delete")}
        handlers["Watch"] = watching("Watch")
    else:
        handlers = {"Append": unary("Append"), "Tail": streaming("Tail")}
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_insecure_port(args.listen)
    server.start()
    print(f"{service} listening on {args.listen}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: server.stop(1))
    server.wait_for_termination()


def http_server(args):
    host = args.host

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self):
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b"{}"
            try:
                request = json.loads(raw or b"{}")
            except ValueError:
                request = {}
            headers = {k.lower(): v for k, v in self.headers.items()}
            body = json.dumps(reply_body(host, "api", self.path, headers, request)).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = answer
        do_POST = answer

        def log_message(self, *_):
            pass

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    addr, port = args.listen.rsplit(":", 1)
    server = Server((addr, int(port)), Handler)
    print(f"api listening on {args.listen}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()


# --- clients -----------------------------------------------------------------


class Caller:
    """Calls one KIND,TARGET,PATH; keeps a gRPC channel for `recycle` calls."""

    def __init__(self, kind, target, path, timeout, recycle=1):
        self.kind, self.target, self.path = kind, target, path
        self.timeout, self.recycle = timeout, max(1, recycle)
        self.channel, self.uses = None, 0

    def close(self):
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def _channel(self):
        import grpc

        if self.channel is None or self.uses >= self.recycle:
            self.close()
            self.channel = grpc.insecure_channel(
                self.target, options=[("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]
            )
            self.uses = 0
        self.uses += 1
        return self.channel

    def call(self, marker):
        """Returns (ok, replies or error text, code)."""
        request = json.dumps({"marker": marker}).encode()
        if self.kind in ("grpc", "grpc-stream"):
            import grpc

            try:
                channel = self._channel()
                if self.kind == "grpc":
                    replies = [channel.unary_unary(self.path)(request, timeout=self.timeout)]
                else:
                    replies = list(channel.unary_stream(self.path)(request, timeout=self.timeout))
                return True, [json.loads(r) for r in replies], "OK"
            except grpc.RpcError as e:
                self.close()
                return False, f"{e.code().name}: {e.details()}", e.code().name
            except Exception as e:  # noqa: BLE001 - any failure is a failed call
                self.close()
                return False, f"{type(e).__name__}: {e}", "ERROR"
        host, port = self.target.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=self.timeout)
        try:
            conn.request("POST", self.path, body=request, headers={"content-type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                return False, f"HTTP {resp.status}: {data[:200]!r}", f"HTTP_{resp.status}"
            return True, [json.loads(data)], "OK"
        except Exception as e:  # noqa: BLE001
            return False, f"{type(e).__name__}: {e}", "ERROR"
        finally:
            conn.close()


def verdict(ok, result, expect_peer, marker):
    if not ok:
        return False, result
    for reply in result:
        if reply.get("peer_host") != expect_peer:
            return False, f"callee saw peer {reply.get('peer_host')!r}, want {expect_peer!r}"
        if reply.get("marker") != marker:
            return False, "marker not echoed"
        if not reply.get("xfcc"):
            return False, "no x-forwarded-client-cert"
    return True, ""


def call(args):
    caller = Caller(args.kind, args.target, args.path, args.timeout)
    ok, result, code = caller.call(args.marker)
    good, why = verdict(ok, result, args.expect_peer, args.marker)
    caller.close()
    print(json.dumps({"ok": good, "code": code, "why": why, "replies": result if ok else []}))
    sys.exit(0 if good else 1)


def hold(args):
    import grpc

    options = [("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]
    if args.tls:
        ca, cert, key, name = args.tls.split(",")
        creds = grpc.ssl_channel_credentials(
            root_certificates=open(ca, "rb").read(),
            private_key=open(key, "rb").read(),
            certificate_chain=open(cert, "rb").read(),
        )
        channel = grpc.secure_channel(args.target, creds, options=options + [("grpc.ssl_target_name_override", name)])
    else:
        channel = grpc.insecure_channel(args.target, options=options)
    out = open(args.out, "a", buffering=1)
    lock = threading.Lock()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    deadline = time.monotonic() + args.duration

    def event(**fields):
        with lock:
            out.write(json.dumps({"t": round(time.time(), 3), **fields}) + "\n")

    def peer_problem(reply, marker):
        if reply.get("peer_host") != args.expect_peer:
            return f"callee saw peer {reply.get('peer_host')!r}, want {args.expect_peer!r}"
        if reply.get("marker") != marker:
            return "marker not echoed"
        return ""

    def streamer():
        marker = f"{args.marker}-stream"
        seconds = args.stream_seconds or args.duration
        request = json.dumps({"marker": marker, "seconds": seconds}).encode()
        call = channel.unary_stream(args.stream)(request, timeout=seconds + 5)
        event(kind="stream-start", path=args.stream)
        n = 0
        try:
            for raw in call:
                n += 1
                problem = peer_problem(json.loads(raw), marker)
                if problem:
                    event(kind="stream-bad", n=n, why=problem)
                if n == 1 or n % 5 == 0:
                    event(kind="stream-msg", n=n)
            event(kind="stream-end", n=n, code="OK", details="")
        except grpc.RpcError as e:
            event(kind="stream-end", n=n, code=e.code().name, details=e.details() or "")

    threads = []
    if args.stream:
        threads.append(threading.Thread(target=streamer, daemon=True))
        threads[-1].start()
    paths = [p for p in args.calls.split(",") if p]
    n = 0
    while paths and not stop.is_set() and time.monotonic() < deadline:
        if args.stop_file and os.path.exists(args.stop_file):
            break
        n += 1
        for path in paths:
            marker = f"{args.marker}-hold-{n}"
            started = time.monotonic()
            try:
                raw = channel.unary_unary(path)(json.dumps({"marker": marker}).encode(), timeout=args.timeout)
                code, details = "OK", peer_problem(json.loads(raw), marker)
            except grpc.RpcError as e:
                code, details = e.code().name, e.details() or ""
            event(kind="call", path=path, code=code, details=details, ms=int((time.monotonic() - started) * 1000))
        stop.wait(args.interval)
    while not paths and not stop.is_set() and time.monotonic() < deadline:
        if args.stop_file and os.path.exists(args.stop_file):
            break
        stop.wait(0.1)
    event(kind="stop")
    channel.close()
    for t in threads:
        t.join(timeout=2)
    out.close()


def load(args):
    stop = threading.Event()
    deadline = time.monotonic() + args.duration
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    results = {}

    def worker(spec):
        kind, target, path = spec.split(",", 2)
        caller = Caller(kind, target, path, args.timeout, args.recycle)
        stats = {"ok": 0, "failed": 0, "failures": []}
        results[spec] = stats
        n = 0
        while not stop.is_set() and time.monotonic() < deadline and n < args.max_calls:
            n += 1
            marker = f"{args.marker}-{n}"
            ok, result, _ = caller.call(marker)
            good, why = verdict(ok, result, args.expect_peer, marker)
            if good:
                stats["ok"] += 1
            else:
                stats["failed"] += 1
                if len(stats["failures"]) < 10:
                    stats["failures"].append({"t": time.strftime("%H:%M:%S"), "why": why})
            stop.wait(args.interval)
        caller.close()

    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in args.specs]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        if args.stop_file and os.path.exists(args.stop_file):
            stop.set()
        time.sleep(0.1)
    for t in threads:
        t.join(timeout=args.timeout + 1)
    with open(args.out + ".tmp", "w") as f:
        json.dump(results, f)
    os.replace(args.out + ".tmp", args.out)


# --- logs -------------------------------------------------------------------


def event_time(line):
    """Unix seconds of a JSON log line: mtlsd's "timestamp", the audit
    log's "time" (RFC 3339, UTC) or a hold log's "t"."""
    import datetime

    if isinstance(line.get("t"), (int, float)):
        return float(line["t"])
    text = line.get("timestamp") or line.get("time")
    if not isinstance(text, str):
        return None
    stamp = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return stamp.timestamp()


def first_event(args):
    wanted = [kv.split("=", 1) for kv in args.match]
    with open(args.file, errors="replace") as f:
        for raw in f:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            t = event_time(line)
            if t is None or t < args.since:
                continue
            if all(str(line.get(k)) == v for k, v in wanted):
                print(f"{t:.3f}")
                return
    sys.exit(1)


def journal_events(_args):
    import re

    ansi = re.compile(r"\x1b\[[0-9;]*m")
    text_line = re.compile(r"^(?:\S+\s+)?(TRACE|DEBUG|INFO|WARN|ERROR)\s+(\S+?): (.*)$")
    field = re.compile(r' ([A-Za-z_][A-Za-z0-9_.]*)=("(?:[^"\\]|\\.)*"|\S*)')
    for raw in sys.stdin:
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        message = entry.get("MESSAGE")
        if isinstance(message, list):  # the journal's form for non-UTF-8 or escape codes
            message = bytes(message).decode("utf-8", "replace")
        message = ansi.sub("", message or "")
        event = {k.lower(): v for k, v in entry.items() if not k.startswith("_") and k != "MESSAGE"}
        parsed = None
        if message.startswith("{"):
            try:
                parsed = json.loads(message)
            except ValueError:
                parsed = None
        if isinstance(parsed, dict):
            event.update(parsed)
        else:
            m = text_line.match(message)
            if m:
                event["level"], event["target"], rest = m.group(1), m.group(2), m.group(3)
                first = field.search(rest)
                event["message"] = rest[: first.start()] if first else rest
                for k, v in field.findall(rest[first.start():] if first else ""):
                    event[k] = json.loads(v) if v.startswith('"') else v
            else:
                # mtlsd's own journal entries (native protocol): the
                # MESSAGE is the text line without time and level, and
                # the fields are journal fields already.
                first = field.search(message) if entry.get("_TRANSPORT") == "journal" else None
                event["message"] = message[: first.start()] if first else message
        event.pop("timestamp", None)
        event["t"] = int(entry["__REALTIME_TIMESTAMP"]) / 1e6
        print(json.dumps(event))


# --- capture check -----------------------------------------------------------


def read_pcap(path):
    """Yields (src, sport, dst, dport, seq, flags, payload) for IPv4/TCP."""
    with open(path, "rb") as f:
        header = f.read(24)
        if len(header) < 24:
            return
        magic = struct.unpack("<I", header[:4])[0]
        endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
        linktype = struct.unpack(endian + "I", header[20:24])[0]
        while True:
            rec = f.read(16)
            if len(rec) < 16:
                return
            _, _, incl, _ = struct.unpack(endian + "IIII", rec)
            frame = f.read(incl)
            if linktype == 1:  # Ethernet
                if len(frame) < 14 or frame[12:14] != b"\x08\x00":
                    continue
                ip = frame[14:]
            elif linktype == 113:  # Linux cooked (tcpdump -i any)
                if len(frame) < 16 or frame[14:16] != b"\x08\x00":
                    continue
                ip = frame[16:]
            elif linktype == 276:  # Linux cooked v2 (tcpdump -i any)
                if len(frame) < 20 or frame[0:2] != b"\x08\x00":
                    continue
                ip = frame[20:]
            else:
                continue
            if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
                continue
            ihl = (ip[0] & 0x0F) * 4
            total = struct.unpack("!H", ip[2:4])[0]
            tcp = ip[ihl:total]
            if len(tcp) < 20:
                continue
            sport, dport, seq = struct.unpack("!HHI", tcp[:8])
            off = (tcp[12] >> 4) * 4
            flags = tcp[13]
            src = ".".join(str(b) for b in ip[12:16])
            dst = ".".join(str(b) for b in ip[16:20])
            yield src, sport, dst, dport, seq, flags, bytes(tcp[off:])


def tls_records_ok(data):
    """Walks TLS records from the first byte; returns (records, problem)."""
    i, records = 0, 0
    while i + 5 <= len(data):
        ctype, major, minor, length = data[i], data[i + 1], data[i + 2], struct.unpack("!H", data[i + 3 : i + 5])[0]
        if ctype not in (20, 21, 22, 23) or major != 3 or minor > 4 or length > 16384 + 2048:
            return records, f"byte {i}: not a TLS record header ({data[i:i + 5].hex()})"
        i += 5 + length
        records += 1
    return records, ""


def pcap_check(args):
    tls_ports = {int(p) for p in args.tls_ports.split(",") if p}
    other_ports = {int(p) for p in args.other_ports.split(",") if p}
    marker = args.marker.encode()
    raw = open(args.pcap, "rb").read()
    summary = {
        "packets_with_payload": 0,
        "marker_in_file": raw.count(marker),
        "marker_in_streams": 0,
        "streams": 0,
        "tls_streams": 0,
        "tls_records": 0,
        "unanchored_streams": 0,
        "problems": [],
    }
    # One entry per direction of each connection. A 4-tuple is reused by
    # later connections (thousands of short ones): a SYN with a new initial
    # sequence number starts a new entry.
    streams = []
    current = {}  # (src, sport, dst, dport) -> index into streams
    for src, sport, dst, dport, seq, flags, payload in read_pcap(args.pcap):
        key = (src, sport, dst, dport)
        if flags & 0x02:  # SYN (also SYN+ACK)
            isn = (seq + 1) & 0xFFFFFFFF
            if key not in current or streams[current[key]]["isn"] != isn:
                current[key] = len(streams)
                streams.append({"key": key, "isn": isn, "segs": {}})
        elif key not in current:
            current[key] = len(streams)
            streams.append({"key": key, "isn": None, "segs": {}})
        s = streams[current[key]]
        if payload:
            summary["packets_with_payload"] += 1
            if sport not in tls_ports | other_ports and dport not in tls_ports | other_ports:
                if len(summary["problems"]) < 20:
                    summary["problems"].append(f"payload on an unexpected port: {src}:{sport} -> {dst}:{dport}")
            s["segs"].setdefault(seq, payload)
    for s in streams:
        src, sport, dst, dport = s["key"]
        if not s["segs"]:
            continue
        summary["streams"] += 1
        if s["isn"] is None:
            summary["unanchored_streams"] += 1
            if sport in tls_ports or dport in tls_ports:
                summary["problems"].append(f"stream without its SYN in the capture: {src}:{sport} -> {dst}:{dport}")
            continue
        data, expect = bytearray(), s["isn"]
        for seq in sorted(s["segs"], key=lambda q: (q - s["isn"]) & 0xFFFFFFFF):
            rel, payload = (seq - expect) & 0xFFFFFFFF, s["segs"][seq]
            if rel > 0x7FFFFFFF:  # retransmission overlapping what we have
                overlap = (expect - seq) & 0xFFFFFFFF
                payload = payload[overlap:] if overlap < len(payload) else b""
                rel = 0
            if rel != 0:
                if sport in tls_ports or dport in tls_ports:
                    # A TLS stream with a hole cannot be checked record by record.
                    summary["problems"].append(f"gap of {rel} bytes in {src}:{sport} -> {dst}:{dport}")
                    break
                # Another port (SSH, MariaDB's own TLS...): the capture
                # dropped packets under load. Not plaintext evidence; the
                # marker is still searched in every byte that was captured.
                summary["gaps_outside_mtls"] = summary.get("gaps_outside_mtls", 0) + 1
                expect = seq
            data += payload
            expect = (expect + len(payload)) & 0xFFFFFFFF
        summary["marker_in_streams"] += bytes(data).count(marker)
        if sport in tls_ports or dport in tls_ports:
            summary["tls_streams"] += 1
            records, problem = tls_records_ok(bytes(data))
            summary["tls_records"] += records
            if problem:
                summary["problems"].append(f"{src}:{sport} -> {dst}:{dport}: {problem}")
    ok = (
        summary["marker_in_file"] == 0
        and summary["marker_in_streams"] == 0
        and not summary["problems"]
        and summary["tls_records"] > 0
    )
    summary["ok"] = ok
    problems = summary["problems"]
    summary["problems"] = problems[:10] + ([f"... {len(problems) - 10} more"] if len(problems) > 10 else [])
    print(json.dumps(summary))
    print(
        f"{summary['packets_with_payload']} payload packets in {summary['streams']} TCP streams; "
        f"{summary['tls_streams']} on mTLS ports parsed as TLS records from their first byte "
        f"({summary['tls_records']} records); marker found {summary['marker_in_file']} times"
        + (f"; problems: {summary['problems'][:3]}" if summary["problems"] else "")
    )
    sys.exit(0 if ok else 1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grpc-server")
    g.add_argument("--listen", required=True)
    g.add_argument("--host", required=True)
    g.add_argument("--service", choices=["database", "eventlog"], required=True)
    h = sub.add_parser("http-server")
    h.add_argument("--listen", required=True)
    h.add_argument("--host", required=True)
    c = sub.add_parser("call")
    c.add_argument("kind", choices=["grpc", "grpc-stream", "http"])
    c.add_argument("target")
    c.add_argument("path")
    c.add_argument("--marker", required=True)
    c.add_argument("--expect-peer", required=True)
    c.add_argument("--timeout", type=float, default=5.0)
    hd = sub.add_parser("hold")
    hd.add_argument("target")
    hd.add_argument("--out", required=True)
    hd.add_argument("--marker", required=True)
    hd.add_argument("--expect-peer", required=True)
    hd.add_argument("--stream", default="")
    hd.add_argument("--stream-seconds", type=float, default=0.0)
    hd.add_argument("--calls", default="")
    hd.add_argument("--interval", type=float, default=0.5)
    hd.add_argument("--stop-file", default="")
    hd.add_argument("--duration", type=float, default=300)
    hd.add_argument("--timeout", type=float, default=5.0)
    hd.add_argument("--tls", default="")
    ld = sub.add_parser("load")
    ld.add_argument("specs", nargs="+")
    ld.add_argument("--out", required=True)
    ld.add_argument("--marker", required=True)
    ld.add_argument("--expect-peer", required=True)
    ld.add_argument("--duration", type=float, required=True)
    ld.add_argument("--stop-file", default="")
    ld.add_argument("--interval", type=float, default=0.05)
    ld.add_argument("--max-calls", type=int, default=20000)
    ld.add_argument("--recycle", type=int, default=20)
    ld.add_argument("--timeout", type=float, default=5.0)
    fe = sub.add_parser("first-event")
    fe.add_argument("file")
    fe.add_argument("since", type=float)
    fe.add_argument("match", nargs="*")
    sub.add_parser("journal-events")
    pc = sub.add_parser("pcap-check")
    pc.add_argument("pcap")
    pc.add_argument("--marker", required=True)
    pc.add_argument("--tls-ports", required=True)
    pc.add_argument("--other-ports", default="")
    args = p.parse_args()
    {
        "grpc-server": grpc_server,
        "http-server": http_server,
        "call": call,
        "hold": hold,
        "load": load,
        "first-event": first_event,
        "journal-events": journal_events,
        "pcap-check": pcap_check,
    }[args.cmd](args)


if __name__ == "__main__":
    main()
