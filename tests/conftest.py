"""Shared fixtures: start real rmq-node processes and wait for them with deadlines.

Binary: $RMQ_NODE_BIN, else <repo>/target/release/rmq-node.
Data dirs live under pytest's tmp_path unless that is tmpfs (tmpfs silently drops O_DIRECT),
in which case they go under <repo>/target/test-data/.
"""

import ctypes
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

READY_RE = re.compile(r"^rmq-node ready kafka=(?P<host>[^\s:]+):(?P<port>\d+)(\s.*)?$")
MQTT_READY_RE = re.compile(r"\smqtt=(?P<host>[^\s:]+):(?P<port>\d+)(\s|$)")
MQTT_WS_READY_RE = re.compile(r"\smqtt-ws=(?P<host>[^\s:]+):(?P<port>\d+)(\s|$)")
START_TIMEOUT_S = float(os.environ.get("RMQ_START_TIMEOUT_S", "30"))
STOP_TIMEOUT_S = 5.0


def node_bin():
    return os.environ.get("RMQ_NODE_BIN") or os.path.join(REPO, "target", "release", "rmq-node")


def wait_until(pred, timeout_s, interval_s=0.02, msg=None):
    """Poll pred() until it returns a truthy value; return it. AssertionError on timeout."""
    deadline = time.monotonic() + timeout_s
    delay = interval_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s"
                                 % (timeout_s, msg or getattr(pred, "__name__", "condition")))
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def _fs_type(path):
    """Filesystem type of the mount containing path (from /proc/self/mountinfo)."""
    path = os.path.realpath(path)
    best, best_type = "", None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, right = line.split(" - ", 1)
                mnt = left.split()[4].replace("\\040", " ")
                fstype = right.split()[0]
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/") or mnt == "/") \
                        and len(mnt) >= len(best):
                    best, best_type = mnt, fstype
    except OSError:
        return None
    return best_type


def _data_root(tmp_path):
    if _fs_type(str(tmp_path)) in ("tmpfs", "ramfs", "overlay"):
        root = os.path.join(REPO, "target", "test-data", uuid.uuid4().hex[:12])
        os.makedirs(root, exist_ok=True)
        return root
    return str(tmp_path)


try:
    _LIBC = ctypes.CDLL(None, use_errno=True)
except OSError:
    _LIBC = None


def _die_with_parent():
    """In the child before exec: get SIGKILL if the test runner dies (PR_SET_PDEATHSIG)."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGKILL, 0, 0, 0)


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Broker(object):
    """One rmq-node process (restartable on the same data dir)."""

    def __init__(self, data_dir, log_path, cores=2, config_file=None, extra_args=(), node_id=None):
        self.data_dir = data_dir
        self.log_path = log_path
        self.cores = cores
        self.config_file = config_file
        self.extra_args = list(extra_args)
        self.node_id = node_id
        self.proc = None
        self.host = None
        self.port = None
        self.mqtt_port = None
        self.mqtt_ws_port = None
        self.stdout_lines = []
        self._lines = None
        self._reader = None
        self.starts = 0
        self._killed = False
        # Set (e.g. to self.port after a first start) to restart on the same Kafka port.
        self.fixed_kafka_port = None
        # Pass --data-dir relative to the working directory (as `./rmq-data`, the default).
        self.relative_data_dir = False
        os.makedirs(data_dir, exist_ok=True)

    # -- properties
    @property
    def bootstrap(self):
        return "%s:%d" % (self.host, self.port)

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def args(self):
        data_dir = os.path.relpath(self.data_dir) if self.relative_data_dir else self.data_dir
        args = [node_bin(), "--cores", str(self.cores), "--data-dir", data_dir,
                "--kafka-addr", "127.0.0.1:%d" % (self.fixed_kafka_port or 0),
                "--mqtt-addr", "127.0.0.1:0",
                "--mqtt-ws-addr", "127.0.0.1:0",
                "--admin-addr", "127.0.0.1:0", "--log-level", "info"]
        if self.node_id is not None:
            args += ["--node-id", str(self.node_id)]
        if self.config_file:
            args += ["--config", self.config_file]
        return args + self.extra_args

    # -- lifecycle
    def start(self):
        assert not self.alive(), "already running"
        binary = node_bin()
        assert os.path.exists(binary), "rmq-node binary not found at %s (build it or set RMQ_NODE_BIN)" % binary
        self.starts += 1
        self._killed = False
        with open(self.log_path, "ab") as log:
            log.write(("\n===== start #%d: %s\n" % (self.starts, " ".join(self.args()))).encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.args(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                start_new_session=True, preexec_fn=_die_with_parent,
                env=dict(os.environ, RUST_BACKTRACE="1"))
        self.stdout_lines = []
        self._lines = queue.Queue()
        self._reader = threading.Thread(target=self._read_stdout,
                                        args=(self.proc, self._lines, self.stdout_lines),
                                        daemon=True)
        self._reader.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill9()
                raise AssertionError("rmq-node did not print its ready line within %.0fs; stderr:\n%s"
                                     % (START_TIMEOUT_S, self.log_tail()))
            try:
                line = self._lines.get(timeout=min(remaining, 0.1))
            except queue.Empty:
                if self.proc.poll() is not None and not self._reader.is_alive() and self._lines.empty():
                    raise AssertionError("rmq-node exited with %s before ready; stderr:\n%s"
                                         % (self.proc.returncode, self.log_tail()))
                continue
            if line is None:
                continue
            m = READY_RE.match(line)
            assert m, "first stdout line is not the ready line: %r" % line
            self.host, self.port = m.group("host"), int(m.group("port"))
            assert self.port != 0, "ready line reports port 0: %r" % line
            mqtt = MQTT_READY_RE.search(line)
            self.mqtt_port = int(mqtt.group("port")) if mqtt else None
            mqtt_ws = MQTT_WS_READY_RE.search(line)
            self.mqtt_ws_port = int(mqtt_ws.group("port")) if mqtt_ws else None
            return self

    @staticmethod
    def _read_stdout(proc, lines, keep):
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            keep.append(line)
            lines.put(line)
        lines.put(None)

    def stop(self, timeout_s=STOP_TIMEOUT_S):
        """SIGTERM; the process must exit 0 within timeout_s."""
        if self.proc is None:
            return
        if self.proc.poll() is not None:
            rc = self.proc.returncode
            self._join()
            if self._killed:
                return
            self._killed = True
            assert rc == 0, "rmq-node had already exited with %s; stderr:\n%s" % (rc, self.log_tail())
            return
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError("rmq-node did not exit within %.0fs of SIGTERM; stderr:\n%s"
                                 % (timeout_s, self.log_tail()))
        self._join()
        self.last_stop_s = time.monotonic() - t0
        self._killed = True  # exit status handled here; teardown must not report it again
        assert rc == 0, "rmq-node exited with %s after SIGTERM; stderr:\n%s" % (rc, self.log_tail())

    def kill9(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self._killed = True
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._join()

    def restart(self, clean=True):
        if clean:
            self.stop()
        else:
            self.kill9()
        return self.start()

    def _join(self):
        if self._reader is not None:
            self._reader.join(timeout=5)

    def log_tail(self, n=200):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def rss_kib(self):
        return rss_kib(self.proc.pid)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        # The failure again, between the captured client output and the node logs: CI
        # excerpts can show the sections without the traceback above them.
        if call.excinfo is not None:
            report.sections.append(("failure (%s)" % call.when, call.excinfo.exconly()[:4000]))
        for i, b in enumerate(getattr(item, "_rmq_brokers", [])):
            report.sections.append(("rmq-node #%d stderr (tail, %s)" % (i, b.log_path), b.log_tail()))


@pytest.fixture
def broker_factory(request, tmp_path):
    """make(cores=2, config=None|dict|str, extra_args=()) -> started Broker. All stopped at teardown."""
    brokers = []
    request.node._rmq_brokers = brokers
    root = _data_root(tmp_path)

    def make(cores=2, config=None, extra_args=(), start=True):
        idx = len(brokers)
        config_file = None
        if config is not None:
            config_file = os.path.join(root, "node%d.toml" % idx)
            with open(config_file, "w") as f:
                if isinstance(config, dict):
                    for k, v in config.items():
                        if isinstance(v, bool):
                            v = "true" if v else "false"
                        elif isinstance(v, str):
                            v = '"%s"' % v
                        f.write("%s = %s\n" % (k, v))
                else:
                    f.write(config)
        b = Broker(os.path.join(root, "node%d-data" % idx), os.path.join(str(tmp_path), "node%d.stderr.log" % idx),
                   cores=cores, config_file=config_file, extra_args=extra_args)
        brokers.append(b)
        if start:
            b.start()
        return b

    yield make
    errors = []
    for b in brokers:
        try:
            b.stop()
        except AssertionError as e:
            errors.append(str(e))
        finally:
            b.kill9()
    if errors:
        pytest.fail("broker teardown: " + "\n".join(errors))


@pytest.fixture
def broker(broker_factory):
    return broker_factory()


def unique_topic(prefix="t"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:10])


class cpu_load(object):
    """Context manager: n busy-looping child processes (CPU contention for startup races)."""

    def __init__(self, n=2):
        self.n = n
        self.procs = []

    def __enter__(self):
        for _ in range(self.n):
            self.procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                               stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent))
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait(timeout=10)
