#!/usr/bin/env python3
"""An "AWS-behaviour" fault-injecting proxy for Secrets Manager, in front of a moto_server.

moto answers every request at once from one in-memory store: reads are always fresh, there is
no versions quota and no throttling. This proxy sits between the AWS SDK (awsJson1.1:
``POST /`` with ``X-Amz-Target: secretsmanager.<Operation>``) and moto and injects the
behaviour AWS documents, deterministically from one seed (``random.Random(seed)`` makes every
random choice). Faults (``--faults``, comma separated, or ``all`` / ``none``):

stale     GetSecretValue, DescribeSecret and ListSecretVersionIds may answer from a snapshot up
          to --stale-ms old; every answer is one moto really gave at some moment in the window.
quota     more than --version-quota versions created per secret in 24 h: LimitExceededException.
throttle  more than --write-tps writes in any sliding 1 s window: ThrottlingException.
lost      a write is applied by moto but the client gets HTTP 500 InternalServiceError or the
          connection closed without an answer (--lost-prob).
stage     a refused UpdateSecretVersionStage answers --stage-code instead of moto's
          InvalidParameterException; --stage-nonatomic-prob makes the move non-atomic.
deleted   for --deleted-ms after a DeleteSecret, CreateSecret of that name is refused.

Control endpoints: ``GET /__proxy/stats`` (JSON counters), ``POST /__proxy/reset``.
See README.md next to this file. Python 3 standard library only.
"""

import argparse
import http.client
import http.server
import json
import random
import socket
import sys
import threading
import time
import urllib.parse
import uuid

FAULTS = ("stale", "quota", "throttle", "lost", "stage", "deleted")
# Operations answered from the (possibly stale) history.
STALE_OPS = ("GetSecretValue", "DescribeSecret", "ListSecretVersionIds")
# Everything else that does not start with one of these is a write.
READ_PREFIXES = ("Get", "Describe", "List", "BatchGet")
# Headers that belong to one hop; Content-Length is recomputed.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
}
# A read seen for a secret is re-read before a write to that secret (so "the value before the
# write" is in the history) while it was last asked for within this many seconds.
SNAPSHOT_KEEP_S = 60.0
SNAPSHOT_MAX_KEYS = 16
CLOSE = object()  # answer: close the connection without a response


def is_read(op):
    return op.startswith(READ_PREFIXES)


class Resp:
    __slots__ = ("status", "reason", "headers", "body")

    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (name, value)
        self.body = body

    def error_code(self):
        for k, v in self.headers:
            if k.lower() == "x-amzn-errortype":
                return v.split(":", 1)[0]
        try:
            return json.loads(self.body).get("__type")
        except Exception:  # noqa: BLE001 - not JSON: no code
            return None


def aws_error(status, code, message):
    """An awsJson1.1 error the way moto (and AWS) sends it: the code in `__type` and in the
    `x-amzn-ErrorType` header."""
    body = json.dumps({"__type": code, "message": message}).encode()
    reason = http.client.responses.get(status, "Error")
    headers = [
        ("x-amzn-RequestId", str(uuid.uuid4())),
        ("x-amzn-ErrorType", code),
        ("Content-Type", "application/x-amz-json-1.1"),
    ]
    return Resp(status, reason, headers, body)


def creates_version(op, params):
    """Whether a successful call of `op` creates a new secret version."""
    if op == "PutSecretValue":
        return True
    if op in ("CreateSecret", "UpdateSecret"):
        return "SecretString" in params or "SecretBinary" in params
    return False


class Proxy:
    def __init__(self, args):
        self.args = args
        self.faults = set(args.faults)
        self.rng = random.Random(args.seed)
        self.lock = threading.Lock()
        up = urllib.parse.urlsplit(args.upstream)
        self.up_host = up.hostname or "127.0.0.1"
        self.up_port = up.port or 80
        self.log_file = open(args.log, "a", buffering=1) if args.log else None
        # fault state (kept across /__proxy/reset)
        self.history = {}  # (op, canonical body) -> [(t_sent, Resp)]
        self.reads_by_secret = {}  # secret -> {key: (path, headers, body, last_asked)}
        self.version_times = {}  # secret -> [t] versions created (or in flight) in the window
        self.tokens = {}  # secret -> {ClientRequestToken: t}
        self.admitted_writes = []  # times of writes let through by `throttle`
        self.recent_writes = []  # times of writes received (for max_writes_in_1s)
        self.deleted = {}  # secret name -> time of its DeleteSecret
        self.reset_counters()

    # -- stats -------------------------------------------------------------------------------

    def reset_counters(self):
        self.calls = {}
        self.writes = 0
        self.max_writes_in_1s = 0
        self.peak_window_ops = {}
        self.recent_write_ops = []
        self.versions_created = {}
        self.fault_counts = {f: 0 for f in FAULTS}
        self.fault_counts["stage_nonatomic"] = 0

    def stats(self):
        with self.lock:
            return {
                "seed": self.args.seed,
                "calls": dict(self.calls),
                "writes": self.writes,
                "max_writes_in_1s": self.max_writes_in_1s,
                "peak_window_ops": dict(self.peak_window_ops),
                "versions_created": dict(self.versions_created),
                "faults": dict(self.fault_counts),
            }

    def log(self, msg):
        if self.log_file:
            self.log_file.write("%.3f %s\n" % (time.time(), msg))

    def fault(self, name, msg):
        """Count an injected fault (call with the lock held)."""
        self.fault_counts[name] += 1
        self.log("fault %s: %s" % (name, msg))

    # -- upstream ----------------------------------------------------------------------------

    def forward(self, method, path, headers, body):
        conn = http.client.HTTPConnection(self.up_host, self.up_port, timeout=120)
        try:
            has_host = any(k.lower() == "host" for k, _ in headers)
            conn.putrequest(method, path, skip_host=has_host, skip_accept_encoding=True)
            for k, v in headers:
                if k.lower() not in HOP_BY_HOP:
                    conn.putheader(k, v)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            r = conn.getresponse()
            data = r.read()
            return Resp(r.status, r.reason, r.getheaders(), data)
        except (OSError, http.client.HTTPException) as e:
            self.log("upstream failed: %s %s: %r" % (method, path, e))
            return aws_error(500, "InternalServiceError", "proxy: upstream failed: %s" % e)
        finally:
            conn.close()

    def call_upstream(self, headers, op, params):
        """An internal call to moto (not counted, not recorded)."""
        hdrs = [(k, v) for k, v in headers if k.lower() != "x-amz-target"]
        hdrs.append(("X-Amz-Target", "secretsmanager." + op))
        return self.forward("POST", "/", hdrs, json.dumps(params).encode())

    # -- stale -------------------------------------------------------------------------------

    def window_s(self):
        return self.args.stale_ms / 1000.0

    def record(self, key, t_sent, resp):
        """Remember an answer moto gave (called with the lock held). It was true at some moment
        after t_sent, so it may be replayed while t_sent is within the window."""
        if resp.status >= 500:
            return
        h = self.history.setdefault(key, [])
        h.append((t_sent, resp))
        cutoff = time.monotonic() - self.window_s()
        while h and h[0][0] < cutoff:
            h.pop(0)

    def snapshot_reads(self, secret):
        """Before a write to `secret`: re-read (and record) every read recently seen for it."""
        now = time.monotonic()
        with self.lock:
            reads = self.reads_by_secret.get(secret, {})
            for key in [k for k, v in reads.items() if v[3] < now - SNAPSHOT_KEEP_S]:
                del reads[key]
            todo = [(key, v[0], v[1], v[2]) for key, v in reads.items()]
        for key, path, headers, body in todo:
            t = time.monotonic()
            resp = self.forward("POST", path, headers, body)
            with self.lock:
                self.record(key, t, resp)

    def remember_read(self, secret, key, path, headers, body):
        with self.lock:
            reads = self.reads_by_secret.setdefault(secret, {})
            reads.pop(key, None)
            reads[key] = (path, headers, body, time.monotonic())
            while len(reads) > SNAPSHOT_MAX_KEYS:
                del reads[next(iter(reads))]

    def stale_answer(self, key, t_sent, fresh):
        with self.lock:
            self.record(key, t_sent, fresh)
            if fresh.status >= 500:
                return fresh
            if self.rng.random() >= self.args.stale_prob:
                return fresh
            cutoff = time.monotonic() - self.window_s()
            older = [(t, r) for t, r in self.history.get(key, []) if t >= cutoff and r is not fresh]
            if not older:
                return fresh
            t_pick, pick = self.rng.choice(older)
            if pick.body != fresh.body or pick.status != fresh.status:
                self.fault(
                    "stale",
                    "%s %s: an answer from %.0f ms ago"
                    % (key[0], key[1][:120], (time.monotonic() - t_pick) * 1000),
                )
            return pick

    # -- stage -------------------------------------------------------------------------------

    def label_holder(self, headers, secret, label):
        r = self.call_upstream(headers, "DescribeSecret", {"SecretId": secret})
        if r.status != 200:
            return False  # unknown
        stages = json.loads(r.body).get("VersionIdsToStages") or {}
        for vid, labels in stages.items():
            if label in labels:
                return vid
        return None

    def nonatomic_move(self, path, headers, params):
        """UpdateSecretVersionStage as check-then-act: check that the label is on
        RemoveFromVersionId, wait, then move it from wherever it is now. Returns None when the
        check fails (the caller forwards the original request)."""
        secret, label = params.get("SecretId"), params.get("VersionStage")
        want = params["RemoveFromVersionId"]
        if self.label_holder(headers, secret, label) != want:
            return None
        with self.lock:
            delay = self.rng.uniform(0, self.args.stage_window_ms) / 1000.0
        time.sleep(delay)
        holder = self.label_holder(headers, secret, label)
        if holder is False:
            return None
        moved = dict(params)
        if holder is None:
            moved.pop("RemoveFromVersionId", None)
        else:
            moved["RemoveFromVersionId"] = holder
        hdrs = [(k, v) for k, v in headers]
        resp = self.forward("POST", path, hdrs, json.dumps(moved).encode())
        if resp.status == 200 and holder != want:
            with self.lock:
                self.fault(
                    "stage_nonatomic",
                    "%s %s moved from %s although the check saw %s" % (secret, label, holder, want),
                )
        return resp

    # -- one AWS request ---------------------------------------------------------------------

    def handle(self, method, path, headers, body):
        target = next((v for k, v in headers if k.lower() == "x-amz-target"), "")
        op = target.split(".", 1)[1] if "." in target else ""
        if not op:
            return self.forward(method, path, headers, body)
        try:
            params = json.loads(body) if body else {}
            if not isinstance(params, dict):
                params = {}
        except ValueError:
            params = {}
        read = is_read(op)
        secret = params.get("SecretId") or params.get("Name")
        token = params.get("ClientRequestToken")
        faults = self.faults
        now = time.monotonic()
        reserved = None
        with self.lock:
            self.calls[op] = self.calls.get(op, 0) + 1
            if not read:
                self.writes += 1
                rw = self.recent_writes
                rw.append(now)
                while rw and rw[0] <= now - 1.0:
                    rw.pop(0)
                self.recent_write_ops.append((now, op))
                while self.recent_write_ops and self.recent_write_ops[0][0] <= now - 1.0:
                    self.recent_write_ops.pop(0)
                if len(rw) > self.max_writes_in_1s:
                    self.max_writes_in_1s = len(rw)
                    peak = {}
                    for _, o in self.recent_write_ops:
                        peak[o] = peak.get(o, 0) + 1
                    self.peak_window_ops = peak
                if "throttle" in faults:
                    aw = self.admitted_writes
                    while aw and aw[0] <= now - 1.0:
                        aw.pop(0)
                    if len(aw) >= self.args.write_tps:
                        self.fault("throttle", "%s %s" % (op, secret))
                        return aws_error(400, "ThrottlingException", "Rate exceeded")
                    aw.append(now)
            if op == "CreateSecret" and "deleted" in faults:
                t = self.deleted.get(params.get("Name"))
                if t is not None and now - t < self.args.deleted_ms / 1000.0:
                    self.fault("deleted", str(params.get("Name")))
                    return aws_error(
                        400,
                        "InvalidRequestException",
                        "You can't create this secret because a secret with this name is "
                        "already scheduled for deletion.",
                    )
            if secret and creates_version(op, params):
                seen = self.tokens.setdefault(secret, {})
                if token is None or token not in seen:
                    times = self.version_times.setdefault(secret, [])
                    while times and times[0] <= now - self.args.quota_window_s:
                        times.pop(0)
                    if "quota" in faults and len(times) >= self.args.version_quota:
                        self.fault("quota", "%s %s" % (op, secret))
                        return aws_error(
                            400,
                            "LimitExceededException",
                            "You have exceeded the maximum number of versions (%d) created "
                            "for this secret in %d hours."
                            % (self.args.version_quota, self.args.quota_window_s // 3600),
                        )
                    times.append(now)
                    reserved = now
            nonatomic = False
            if (
                op == "UpdateSecretVersionStage"
                and "stage" in faults
                and params.get("RemoveFromVersionId")
                and self.args.stage_nonatomic_prob > 0
            ):
                nonatomic = self.rng.random() < self.args.stage_nonatomic_prob

        stale = "stale" in faults and op in STALE_OPS and isinstance(secret, str)
        if "stale" in faults and not read and isinstance(secret, str):
            self.snapshot_reads(secret)
        key = None
        if stale:
            canon = json.dumps(params, sort_keys=True, separators=(",", ":"))
            key = (op, canon)
            self.remember_read(secret, key, path, headers, body)

        t_sent = time.monotonic()
        resp = None
        if nonatomic:
            resp = self.nonatomic_move(path, headers, params)
        if resp is None:
            resp = self.forward(method, path, headers, body)

        with self.lock:
            if reserved is not None:
                if resp.status == 200:
                    if token is not None:
                        self.tokens.setdefault(secret, {})[token] = now
                    self.versions_created[secret] = self.versions_created.get(secret, 0) + 1
                else:
                    times = self.version_times.get(secret, [])
                    if reserved in times:
                        times.remove(reserved)
            if resp.status == 200 and isinstance(secret, str):
                if op == "DeleteSecret":
                    self.deleted[secret] = time.monotonic()
                    try:
                        name = json.loads(resp.body).get("Name")
                    except ValueError:
                        name = None
                    if isinstance(name, str):
                        self.deleted[name] = self.deleted[secret]
                elif op == "RestoreSecret":
                    self.deleted.pop(secret, None)
            if (
                op == "UpdateSecretVersionStage"
                and "stage" in faults
                and resp.status == 400
                and resp.error_code() == "InvalidParameterException"
            ):
                try:
                    msg = json.loads(resp.body).get("message") or ""
                except ValueError:
                    msg = ""
                msg = msg or "The staging label is not attached to RemoveFromVersionId."
                self.fault("stage", "%s: %s" % (secret, msg))
                resp = aws_error(400, self.args.stage_code, msg)

        if stale:
            resp = self.stale_answer(key, t_sent, resp)

        if not read and "lost" in faults:
            with self.lock:
                lost = self.rng.random() < self.args.lost_prob
                close = lost and self.rng.random() < 0.5
                if lost:
                    self.fault("lost", "%s %s (%s)" % (op, secret, "closed" if close else "500"))
            if lost:
                if close:
                    return CLOSE
                return aws_error(500, "InternalServiceError", "An error occurred on the server side.")
        return resp


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "aws-behaviour-proxy"
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle plus the client's
    # delayed ACK add ~40 ms to every answer.
    disable_nagle_algorithm = True
    proxy = None  # set in main

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass

    def read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def send(self, resp):
        self.send_response_only(resp.status, resp.reason)
        for k, v in resp.headers:
            if k.lower() not in HOP_BY_HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(resp.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(resp.body)
        self.wfile.flush()

    def send_json(self, obj):
        body = json.dumps(obj, sort_keys=True).encode()
        self.send(Resp(200, "OK", [("Content-Type", "application/json")], body))

    def do_any(self):
        body = self.read_body()
        path = urllib.parse.urlsplit(self.path).path
        p = self.proxy
        if path == "/__proxy/stats":
            return self.send_json(p.stats())
        if path == "/__proxy/reset":
            with p.lock:
                p.reset_counters()
            p.log("reset")
            return self.send_json({"reset": True})
        headers = list(self.headers.items())
        try:
            resp = p.handle(self.command, self.path, headers, body)
        except Exception as e:  # noqa: BLE001 - answer, never hang the client
            p.log("proxy error: %r" % (e,))
            resp = aws_error(500, "InternalServiceError", "proxy error: %s" % e)
        if resp is CLOSE:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return None
        return self.send(resp)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_any


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512
    allow_reuse_address = True


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--upstream", required=True, help="moto_server URL, http://127.0.0.1:PORT")
    ap.add_argument("--listen-host", default="127.0.0.1", help="address to listen on (the lab: its bridge)")
    ap.add_argument("--listen-port", type=int, default=0, help="port (0: any free)")
    ap.add_argument("--seed", type=int, default=None, help="seed of every random choice")
    ap.add_argument("--faults", default="all", help="comma list of %s, or all, or none" % ",".join(FAULTS))
    ap.add_argument("--stale-ms", type=float, default=2000)
    ap.add_argument("--stale-prob", type=float, default=0.5)
    ap.add_argument("--version-quota", type=int, default=100)
    ap.add_argument("--quota-window-s", type=int, default=86400)
    ap.add_argument("--write-tps", type=int, default=50)
    ap.add_argument("--lost-prob", type=float, default=0.05)
    ap.add_argument("--stage-code", default="InvalidRequestException")
    ap.add_argument("--stage-nonatomic-prob", type=float, default=0.0)
    ap.add_argument("--stage-window-ms", type=float, default=200)
    ap.add_argument("--deleted-ms", type=float, default=3000)
    ap.add_argument("--log", default=None, help="append fault events to this file")
    args = ap.parse_args(argv)
    spec = args.faults.strip()
    if spec == "all":
        args.faults = list(FAULTS)
    elif spec in ("none", ""):
        args.faults = []
    else:
        args.faults = [f.strip() for f in spec.split(",") if f.strip()]
        unknown = [f for f in args.faults if f not in FAULTS]
        if unknown:
            ap.error("unknown fault(s) %s; known: %s" % (",".join(unknown), ",".join(FAULTS)))
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**63)
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    proxy = Proxy(args)
    Handler.proxy = proxy
    server = Server((args.listen_host, args.listen_port), Handler)
    port = server.server_address[1]
    banner = "aws-behaviour proxy: seed %d, faults %s, upstream %s" % (
        args.seed,
        ",".join(args.faults) or "none",
        args.upstream,
    )
    print(banner, file=sys.stderr, flush=True)
    proxy.log(banner)
    print("listening on %s:%d" % (args.listen_host, port), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
