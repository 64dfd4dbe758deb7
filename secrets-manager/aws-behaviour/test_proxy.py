"""Tests of proxy.py against a real moto_server (started once for the module on a free loopback
port, killed by pid at the end). Run: python3 -m unittest discover -s secrets-manager/aws-behaviour
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
PROXY = os.path.join(HERE, "proxy.py")
AUTH = (
    "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/secretsmanager/aws4_request, "
    "SignedHeaders=host;x-amz-target, Signature=0"
)
MOTO = {}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill(proc):
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if proc.stdout:
        proc.stdout.close()


def setUpModule():  # noqa: N802 - unittest name
    port = free_port()
    proc = subprocess.Popen(
        ["moto_server", "-H", "127.0.0.1", "-p", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    MOTO["proc"], MOTO["port"] = proc, port
    deadline = time.monotonic() + 30
    delay = 0.02
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/")
            c.getresponse().read()
            c.close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                kill(proc)
                raise RuntimeError("moto_server did not start")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def tearDownModule():  # noqa: N802
    kill(MOTO["proc"])


def uniq(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:8])


class Client:
    """One keep-alive connection speaking awsJson1.1 like the SDK."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def call(self, op, params):
        """(status, error code or None, parsed body); status None when the connection was
        closed without an answer."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        body = json.dumps(params).encode()
        headers = {
            "X-Amz-Target": "secretsmanager." + op,
            "Content-Type": "application/x-amz-json-1.1",
            "Authorization": AUTH,
        }
        try:
            self.conn.request("POST", "/", body, headers)
            r = self.conn.getresponse()
            data = r.read()
        except (http.client.RemoteDisconnected, ConnectionError):
            self.conn.close()
            self.conn = None
            return None, "closed", None
        parsed = json.loads(data) if data else {}
        code = r.getheader("x-amzn-ErrorType")
        if r.status != 200:
            self_code = parsed.get("__type")
            assert code == self_code, (code, self_code)
        return r.status, code, parsed

    def close(self):
        if self.conn:
            self.conn.close()


class ProxyTest(unittest.TestCase):
    def start(self, *flags, seed=1):
        proc = subprocess.Popen(
            [
                sys.executable,
                PROXY,
                "--upstream",
                "http://127.0.0.1:%d" % MOTO["port"],
                "--seed",
                str(seed),
                *flags,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.addCleanup(kill, proc)
        line = proc.stdout.readline()
        self.assertTrue(line.startswith("listening on 127.0.0.1:"), line)
        port = int(line.strip().rsplit(":", 1)[1])
        client = Client(port)
        self.addCleanup(client.close)
        return port, client

    def stats(self, port):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/__proxy/stats")
        r = c.getresponse()
        data = json.loads(r.read())
        c.close()
        return data

    def reset(self, port):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("POST", "/__proxy/reset", b"")
        r = c.getresponse()
        r.read()
        c.close()

    def create(self, c, name, value="v0", token=None):
        params = {"Name": name, "SecretString": value}
        if token:
            params["ClientRequestToken"] = token
        return c.call("CreateSecret", params)

    def put_pending(self, c, name, value, token=None):
        token = token or str(uuid.uuid4())
        st, code, _ = c.call(
            "PutSecretValue",
            {
                "SecretId": name,
                "SecretString": value,
                "ClientRequestToken": token,
                "VersionStages": ["PENDING"],
            },
        )
        self.assertEqual(st, 200, code)
        return token

    def current(self, c, name):
        st, code, body = c.call("DescribeSecret", {"SecretId": name})
        self.assertEqual(st, 200, code)
        for vid, stages in body["VersionIdsToStages"].items():
            if "AWSCURRENT" in stages:
                return vid
        return None

    # ---------------------------------------------------------------------------------------

    def test_passthrough_keepalive_and_stats(self):
        port, c = self.start("--faults", "none")
        name = uniq("pass")
        self.assertEqual(self.create(c, name)[0], 200)
        for _ in range(3):
            st, code, body = c.call("GetSecretValue", {"SecretId": name})
            self.assertEqual((st, body["SecretString"]), (200, "v0"), code)
        st, code, body = c.call("GetSecretValue", {"SecretId": uniq("missing")})
        self.assertEqual((st, code), (404, "ResourceNotFoundException"))
        s = self.stats(port)
        self.assertEqual(s["seed"], 1)
        self.assertEqual(s["calls"], {"CreateSecret": 1, "GetSecretValue": 4})
        self.assertEqual(s["writes"], 1)
        self.assertEqual(s["max_writes_in_1s"], 1)
        self.assertEqual(s["versions_created"], {name: 1})
        self.assertEqual(set(s["faults"].values()), {0})
        self.reset(port)
        s = self.stats(port)
        self.assertEqual((s["calls"], s["writes"], s["versions_created"]), ({}, 0, {}))

    def test_stale_replays_only_answers_within_window(self):
        port, c = self.start("--faults", "stale", "--stale-prob", "1", "--stale-ms", "300")
        name = uniq("stale")
        self.assertEqual(c.call("GetSecretValue", {"SecretId": name})[1], "ResourceNotFoundException")
        self.assertEqual(self.create(c, name)[0], 200)
        # Right after the create: the NotFound answer is still within the window.
        st, code, _ = c.call("GetSecretValue", {"SecretId": name})
        self.assertEqual((st, code), (404, "ResourceNotFoundException"))
        time.sleep(0.35)  # the window passes: nothing older than 300 ms may come back
        for _ in range(5):
            st, code, body = c.call("GetSecretValue", {"SecretId": name})
            self.assertEqual((st, body.get("SecretString")), (200, "v0"), code)
        # A write: the read before it is snapshotted, so the previous value can come back.
        st, code, _ = c.call("PutSecretValue", {"SecretId": name, "SecretString": "v1"})
        self.assertEqual(st, 200, code)
        st, code, body = c.call("GetSecretValue", {"SecretId": name})
        self.assertEqual(body.get("SecretString"), "v0")
        time.sleep(0.35)
        for _ in range(3):
            st, code, body = c.call("GetSecretValue", {"SecretId": name})
            self.assertEqual(body.get("SecretString"), "v1")
        self.assertGreaterEqual(self.stats(port)["faults"]["stale"], 2)

    def test_quota(self):
        port, c = self.start("--faults", "quota", "--version-quota", "3")
        name = uniq("quota")
        self.assertEqual(self.create(c, name)[0], 200)
        t1 = str(uuid.uuid4())
        self.assertEqual(c.call("PutSecretValue", {"SecretId": name, "SecretString": "1", "ClientRequestToken": t1})[0], 200)
        self.assertEqual(c.call("PutSecretValue", {"SecretId": name, "SecretString": "2"})[0], 200)
        st, code, body = c.call("PutSecretValue", {"SecretId": name, "SecretString": "3"})
        self.assertEqual((st, code), (400, "LimitExceededException"))
        self.assertIn("maximum number of versions", body["message"])
        # A retry with a token already used creates no version: forwarded.
        st, code, _ = c.call("PutSecretValue", {"SecretId": name, "SecretString": "1", "ClientRequestToken": t1})
        self.assertEqual(st, 200, code)
        # Tags are no version.
        self.assertEqual(c.call("TagResource", {"SecretId": name, "Tags": [{"Key": "k", "Value": "v"}]})[0], 200)
        s = self.stats(port)
        self.assertEqual(s["versions_created"], {name: 3})
        self.assertEqual(s["faults"]["quota"], 1)
        self.reset(port)  # counters only: the quota window stays
        self.assertEqual(c.call("PutSecretValue", {"SecretId": name, "SecretString": "4"})[1], "LimitExceededException")

    def test_throttle(self):
        port, c = self.start("--faults", "throttle", "--write-tps", "3")
        name = uniq("thr")
        codes = [self.create(c, name)[1]]
        for i in range(7):
            codes.append(c.call("TagResource", {"SecretId": name, "Tags": [{"Key": "k", "Value": str(i)}]})[1])
        throttled = codes.count("ThrottlingException")
        self.assertGreaterEqual(throttled, 1, codes)
        self.assertEqual(set(codes) - {None, "ThrottlingException"}, set(), codes)
        # Reads are never throttled.
        for _ in range(10):
            self.assertEqual(c.call("DescribeSecret", {"SecretId": name})[0], 200)
        s = self.stats(port)
        self.assertEqual(s["faults"]["throttle"], throttled)
        self.assertEqual(s["writes"], 8)
        self.assertGreaterEqual(s["max_writes_in_1s"], 4)

    def test_lost_writes_are_applied(self):
        port, c = self.start("--faults", "lost", "--lost-prob", "1")
        seen = set()
        for i in range(8):
            name = uniq("lost")
            st, code, _ = self.create(c, name)
            self.assertIn(code, ("InternalServiceError", "closed"))
            self.assertIn(st, (500, None))
            seen.add(code)
            # but it was applied (reads are never lost)
            self.assertEqual(c.call("DescribeSecret", {"SecretId": name})[0], 200)
        self.assertEqual(seen, {"InternalServiceError", "closed"})
        self.assertEqual(self.stats(port)["faults"]["lost"], 8)

    def test_stage_lost_race_answers_configured_code(self):
        port, c = self.start("--faults", "stage", "--stage-code", "InvalidRequestException")
        name = uniq("stage")
        self.create(c, name)
        v0 = self.current(c, name)
        a = self.put_pending(c, name, "a")
        b = self.put_pending(c, name, "b")
        move = {"SecretId": name, "VersionStage": "AWSCURRENT", "RemoveFromVersionId": v0}
        self.assertEqual(c.call("UpdateSecretVersionStage", dict(move, MoveToVersionId=a))[0], 200)
        st, code, body = c.call("UpdateSecretVersionStage", dict(move, MoveToVersionId=b))
        self.assertEqual((st, code), (400, "InvalidRequestException"))
        self.assertTrue(body["message"])
        self.assertEqual(self.current(c, name), a)
        self.assertEqual(self.stats(port)["faults"]["stage"], 1)

    def test_stage_nonatomic_both_moves_succeed(self):
        port, c = self.start(
            "--faults", "stage", "--stage-nonatomic-prob", "1", "--stage-window-ms", "300"
        )
        name = uniq("nonatomic")
        self.create(c, name)
        deadline = time.monotonic() + 30
        while True:
            v = self.current(c, name)
            a = self.put_pending(c, name, "a")
            b = self.put_pending(c, name, "b")
            results = {}

            def move(to):
                cl = Client(c.port)
                results[to] = cl.call(
                    "UpdateSecretVersionStage",
                    {"SecretId": name, "VersionStage": "AWSCURRENT", "MoveToVersionId": to, "RemoveFromVersionId": v},
                )[0]
                cl.close()

            ts = [threading.Thread(target=move, args=(x,)) for x in (a, b)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            if results[a] == 200 and results[b] == 200:
                break
            self.assertLess(time.monotonic(), deadline, "two conditional moves never both succeeded")
        self.assertIn(self.current(c, name), (a, b))
        self.assertGreaterEqual(self.stats(port)["faults"]["stage_nonatomic"], 1)

    def test_deleted_name_is_blocked_for_a_while(self):
        port, c = self.start("--faults", "deleted", "--deleted-ms", "400")
        name = uniq("del")
        self.assertEqual(self.create(c, name)[0], 200)
        st, code, _ = c.call("DeleteSecret", {"SecretId": name, "ForceDeleteWithoutRecovery": True})
        self.assertEqual(st, 200, code)
        t0 = time.monotonic()
        st, code, body = self.create(c, name)
        self.assertEqual((st, code), (400, "InvalidRequestException"))
        self.assertIn("scheduled for deletion", body["message"])
        deadline = t0 + 10
        while True:
            st, code, _ = self.create(c, name)
            if st == 200:
                break
            self.assertEqual(code, "InvalidRequestException")
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.05)
        self.assertGreaterEqual(time.monotonic() - t0, 0.35)
        self.assertGreaterEqual(self.stats(port)["faults"]["deleted"], 1)

    def run_sequence(self, seed):
        port, c = self.start("--faults", "lost,stale", "--lost-prob", "0.5", "--stale-prob", "0.5", "--stale-ms", "60000", seed=seed)
        name = uniq("det")
        out = [c.call("GetSecretValue", {"SecretId": name})[1]]
        out.append(self.create(c, name, token="00000000-0000-4000-8000-000000000000")[1])
        for i in range(20):
            tok = "00000000-0000-4000-8000-%012d" % (i + 1)
            out.append(c.call("PutSecretValue", {"SecretId": name, "SecretString": str(i), "ClientRequestToken": tok})[1])
            st, code, body = c.call("GetSecretValue", {"SecretId": name})
            out.append(code or body.get("VersionId"))
        return out, self.stats(port)["faults"]

    def test_same_seed_same_faults(self):
        a, fa = self.run_sequence(42)
        b, fb = self.run_sequence(42)
        self.assertEqual(a, b)
        self.assertEqual(fa, fb)
        self.assertGreater(fa["lost"], 0)
        self.assertGreater(fa["stale"], 0)
        other, _ = self.run_sequence(43)
        self.assertNotEqual(a, other)

    def test_fifty_concurrent_clients(self):
        port, c = self.start("--faults", "none")
        name = uniq("many")
        self.create(c, name)
        errors = []

        def worker(i):
            cl = Client(port)
            try:
                for j in range(4):
                    st, code, _ = cl.call("GetSecretValue", {"SecretId": name})
                    if st != 200:
                        errors.append((i, j, code))
                    st, code, _ = cl.call("TagResource", {"SecretId": name, "Tags": [{"Key": "w%d" % i, "Value": str(j)}]})
                    if st != 200:
                        errors.append((i, j, code))
            finally:
                cl.close()

        ts = [threading.Thread(target=worker, args=(i,)) for i in range(50)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        self.assertEqual(errors, [])
        s = self.stats(port)
        self.assertEqual(s["calls"]["GetSecretValue"], 200)
        self.assertEqual(s["calls"]["TagResource"], 200)


if __name__ == "__main__":
    unittest.main()
