#!/usr/bin/env python3
"""The Python client (client/python/lathe) against a real lathed: submit, watch to completion with gap-free
sequence numbers (also across a kill -9 and restart of the daemon), result, cancel, a refused parameter, the job
list. Run by `make check`:

  /usr/bin/python3 tests/python/test_client.py BUILD/bin
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "client", "python"))
import lathe  # noqa: E402

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build", "bin"))


class Daemon:
    """A lathed of the test's own: socket and store in a fresh folder."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="lathe-py-")
        self.sock = os.path.join(self.dir, "run", "lathed.sock")
        self.home = os.path.join(self.dir, "home")
        self.proc = None

    def start(self):
        env = dict(os.environ, LATHE_TEST_CACHE_DIR=os.environ.get("LATHE_TEST_CACHE_DIR", ""))
        with open(os.path.join(self.dir, "lathed.log"), "a") as log:
            self.proc = subprocess.Popen([os.path.join(BIN, "lathed"), "--socket", self.sock, "--home", self.home],
                                         stdout=log, stderr=log, env=env)
        for _ in range(200):
            try:
                with lathe.Client(self.sock, timeout=0.5) as c:
                    c.ping()
                    return
            except lathe.LatheError:
                time.sleep(0.05)
        raise RuntimeError("lathed did not start; see " + os.path.join(self.dir, "lathed.log"))

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class ClientTest(unittest.TestCase):
    def setUp(self):
        self.d = Daemon()
        self.d.start()
        self.c = lathe.Client(self.d.sock)

    def tearDown(self):
        self.c.close()
        self.d.stop()

    def test_submit_watch_result(self):
        job = self.c.submit("sleep", steps=5, delay_ms=20)
        seqs, states = [], []
        for ev in self.c.watch(job):
            seqs.append(ev["seq"])
            if ev["type"] == "state":
                states.append(ev["data"]["state"])
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)), "gap-free, in order")
        self.assertEqual(states[-1], "succeeded")
        self.assertEqual(self.c.result(job)["steps"], 5)
        self.assertEqual(self.c.wait(job), "succeeded")
        self.assertIn(job, [j["id"] for j in self.c.jobs(all=True)])
        self.assertEqual(self.c.jobs(), [], "finished jobs leave the default list")

    def test_cancel(self):
        job = self.c.submit("sleep", steps=200, delay_ms=50)
        for ev in self.c.watch(job):
            if ev["type"] == "progress":
                break
        self.assertTrue(self.c.cancel(job)["cancelling"])
        self.assertEqual(self.c.wait(job, timeout=20), "cancelled")

    def test_devices(self):
        workers = self.c.devices()
        self.assertGreaterEqual(len(workers), 1)
        self.assertIn(workers[0]["state"], ("starting", "idle", "busy", "down"))

    def test_remove_and_prune(self):
        a, b = self.c.submit("sleep", steps=1), self.c.submit("sleep", steps=1)
        self.assertEqual(self.c.wait(b, timeout=20), "succeeded")
        self.c.remove(a)
        with self.assertRaises(lathe.LatheError) as e:
            self.c.show(a)
        self.assertEqual(e.exception.code, "not_found")
        self.assertEqual(self.c.prune(3600), 0, "nothing ended an hour ago")
        self.assertGreaterEqual(self.c.prune(0), 1)
        self.assertNotIn(b, [j["id"] for j in self.c.jobs(all=True)])

    def test_refused_parameter_names_the_field(self):
        with self.assertRaises(lathe.LatheError) as e:
            self.c.submit("sleep", steps="many")
        self.assertEqual(e.exception.code, "bad_type")
        self.assertEqual(e.exception.field, "params.steps")
        with self.assertRaises(lathe.LatheError) as e:
            self.c.show(999)
        self.assertEqual(e.exception.code, "not_found")

    def test_watch_survives_a_daemon_restart(self):
        job = self.c.submit("sleep", steps=30, delay_ms=50)
        seqs, restarted = [], False
        for ev in self.c.watch(job):
            seqs.append(ev["seq"])
            if not restarted and ev["type"] == "progress" and ev["data"]["step"] >= 5:
                self.d.kill9()
                self.d.start()
                restarted = True
        self.assertTrue(restarted)
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)), "gap-free across the restart")
        self.assertEqual(self.c.wait(job), "succeeded")


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
