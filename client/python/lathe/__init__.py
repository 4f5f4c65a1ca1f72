"""A small client for lathed, the Lathe job daemon: submit jobs, follow their events, read their results.

It speaks the daemon's protocol (docs/protocol.md: msgpack maps over a ZeroMQ socket) with Debian's python3-zmq
and python3-msgpack and nothing else. The socket is found as the `lathe` CLI finds it: $LATHE_SOCKET, else
$XDG_RUNTIME_DIR/lathe/lathed.sock, else /tmp/lathe-UID/lathed.sock.

    import lathe
    c = lathe.Client()
    job = c.submit("generate", model="models/lathe-kjv-llama", prompt=["In the beginning"], max_tokens=20)
    for ev in c.watch(job):
        print(ev["type"], ev["data"])
    print(c.result(job)["texts"])
"""
import os
import shutil
import subprocess
import time

import msgpack
import zmq

PROTOCOL = 1
__all__ = ["Client", "LatheError", "default_socket"]


class LatheError(Exception):
    """A request the daemon refused, or a daemon that did not answer. `code` is the protocol's stable name
    ("not_found", "out_of_range", ..., or "unreachable"), `field` the parameter it concerns ("params.steps")."""

    def __init__(self, code, msg, field=""):
        super().__init__(f"{code}: {msg}")
        self.code, self.msg, self.field = code, msg, field


def default_socket():
    """The daemon's socket path, as the CLI finds it."""
    if os.environ.get("LATHE_SOCKET"):
        return os.environ["LATHE_SOCKET"]
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "lathe", "lathed.sock")
    return f"/tmp/lathe-{os.getuid()}/lathed.sock"


FINAL = ("succeeded", "failed", "cancelled")
# The path parameters of the job kinds (jobs/kinds.def): the daemon takes absolute paths only.
PATH_PARAMS = {"adapter", "data", "eval", "eval_general", "input", "instructions", "log", "model", "negative",
               "output", "positive", "prompts", "steer_vector", "student", "teacher"}


class Client:
    """A connection to one lathed. `socket`: its ipc path (default: default_socket()); `autostart`: start a daemon
    with `lathe daemon start` when none answers; `timeout`: seconds to wait for a reply."""

    def __init__(self, socket=None, autostart=False, timeout=10.0):
        self.socket_path = socket or default_socket()
        self.timeout = timeout
        self._rid = 0
        self._pending = []  # pushed events that arrived while waiting for a reply
        self._ctx = zmq.Context.instance()
        self._sock = None
        if autostart and not os.path.exists(self.socket_path):
            self._start_daemon()
        self._connect()

    def _start_daemon(self):
        exe = shutil.which("lathe")
        if not exe:
            raise LatheError("unreachable", "no daemon at %s and no `lathe` on PATH to start one" % self.socket_path)
        env = dict(os.environ, LATHE_SOCKET=self.socket_path)
        subprocess.run([exe, "daemon", "start"], env=env, check=True, stdout=subprocess.DEVNULL)

    def _connect(self):
        if self._sock is not None:
            self._sock.close(linger=0)
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect("ipc://" + self.socket_path)

    def close(self):
        """Closes the connection."""
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- requests ----

    def _recv(self, timeout):
        if not self._sock.poll(int(timeout * 1000)):
            return None
        return msgpack.unpackb(self._sock.recv(), raw=False, strict_map_key=False)

    def call(self, op, **fields):
        """Sends one request and returns its reply (a dict). Raises LatheError with the daemon's code on refusal."""
        self._rid += 1
        rid = self._rid
        msg = dict(fields, v=PROTOCOL, op=op, rid=rid)
        self._sock.send(msgpack.packb(msg, use_bin_type=True))
        end = time.monotonic() + self.timeout
        while True:
            left = end - time.monotonic()
            reply = self._recv(max(left, 0)) if left > 0 else None
            if reply is None:
                # A late reply must not be taken for the next request's: start a fresh connection.
                self._connect()
                raise LatheError("unreachable", "no reply from lathed at %s within %gs" % (self.socket_path,
                                                                                          self.timeout))
            if "event" in reply:
                self._pending.append(reply["event"])
                continue
            if reply.get("rid") != rid:
                continue  # the reply to an earlier request that timed out
            if reply.get("ok"):
                return reply
            raise LatheError(reply.get("code", "internal"), reply.get("msg", ""), reply.get("field", ""))

    def ping(self):
        """The daemon's pid, version and protocol."""
        return self.call("ping")

    def status(self):
        """The daemon's status: job counts, the worker, watchers."""
        return self.call("status")

    def submit(self, kind, sid=None, priority=0, hold=False, **params):
        """Queues a job of `kind` with its parameters (keyword arguments; dashes or underscores; a list for a
        parameter given several times, such as prompt) and returns its id. Relative paths are made absolute here,
        as the CLI makes them. LATHE_DEVICE, when set, becomes the job's device unless `device` is given."""
        p = {}
        for k, v in params.items():
            key = k.replace("-", "_")
            if isinstance(v, str) and key in PATH_PARAMS and v and not v.startswith("/"):
                v = os.path.abspath(v)
            p[key] = list(v) if isinstance(v, tuple) else v
        if "device" not in p and os.environ.get("LATHE_DEVICE"):
            p["device"] = os.environ["LATHE_DEVICE"]  # the GPU chosen on the client reaches the job
        fields = {"kind": kind, "params": p, "priority": priority, "hold": hold}
        if sid:
            fields["sid"] = sid
        return self.call("submit", **fields)["id"]

    def show(self, job):
        """The job in full (a dict: state, reason, params, result, ...)."""
        return self.call("show", id=job)["job"]

    def result(self, job):
        """The job's result (a dict), once it has one."""
        return self.call("result", id=job).get("result")

    def cancel(self, job):
        """Asks the daemon to cancel the job; returns the reply (the state, and whether it is stopping)."""
        return self.call("cancel", id=job)

    def devices(self):
        """The daemon's workers (a list of dicts: index, device, state, job, memory_mib, ...), one per device."""
        return self.status()["workers"]

    def remove(self, job):
        """Removes a finished job: its row, events and folder."""
        self.call("remove", id=job)

    def prune(self, older_than_s):
        """Removes every finished job that ended more than older_than_s seconds ago; returns how many."""
        cutoff, removed = time.time() - older_than_s, 0
        while True:
            reply = self.call("prune", older_than_ms=max(0, int((time.time() - cutoff) * 1000)))
            removed += reply["removed"]
            if not reply.get("more"):
                return removed

    def jobs(self, all=False):
        """Every waiting and running job (all=True: every job), page by page."""
        out, after = [], 0
        while True:
            reply = self.call("list", all=all, after=after)
            out += reply["jobs"]
            if not reply.get("more"):
                return out
            after = reply["last"]

    def watch(self, job, after=0):
        """The job's events (dicts with seq, type, data, ...) from seq `after`, as they come, until its final state
        event. Survives a daemon restart: it asks again from the last seq it saw, so no event is missed or seen
        twice."""
        last = after
        while True:
            try:
                reply = self.call("events", id=job, after=last, follow=True)
            except LatheError as e:
                if e.code != "unreachable":
                    raise
                time.sleep(0.2)
                continue
            final = False
            for ev in reply["events"]:
                if ev["seq"] > last:
                    last = ev["seq"]
                    yield ev
                    final = final or (ev["type"] == "state" and ev["data"].get("state") in FINAL)
            if final or (reply["state"] in FINAL and not reply.get("more")):
                return
            if reply.get("more"):
                continue
            # Watching: pushed events, then ask again when idle for a second or a gap shows.
            idle_since = time.monotonic()
            while time.monotonic() - idle_since < 1.0:
                ev = self._pending.pop(0) if self._pending else None
                if ev is None:
                    msg = self._recv(0.2)
                    ev = msg.get("event") if msg else None
                if ev is None or ev.get("job") != job:
                    continue
                if ev["seq"] != last + 1:
                    break  # a gap: ask for what is missing
                last = ev["seq"]
                idle_since = time.monotonic()
                yield ev
                if ev["type"] == "state" and ev["data"].get("state") in FINAL:
                    return

    def wait(self, job, timeout=None):
        """Blocks until the job is in a final state and returns that state ("succeeded", "failed" or
        "cancelled"). With timeout (seconds), raises TimeoutError when it has not ended by then."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            state = self.show(job)["state"]
            if state in FINAL:
                return state
            if end is not None and time.monotonic() > end:
                raise TimeoutError("job %d is still %s" % (job, state))
            time.sleep(0.1)
