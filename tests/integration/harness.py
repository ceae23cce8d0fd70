"""harness.py — a small TAP harness and a fixture running the real server.

A test file registers functions with @test and ends with ``run()``:

    from harness import test, run, Server, SmtpClient

    @test("a message is delivered", timeout=20)
    def _():
        with Server() as srv:
            ...

    run()

Each test runs on its own: an exception (a failed assert included) turns it
into "not ok N - name" followed by the traceback and the tail of every server
log it started, as "# " comment lines. A test that outlives its time limit is
interrupted (SIGALRM) and fails. Every server a test starts is killed and its
temporary state directory removed when the test ends, whatever happened.
The script exits 0 when every test passed, 1 otherwise.

Environment: GUILLEMOT (the binary), top_srcdir, top_builddir; when run by hand
they default to the source tree this file lives in, and GUILE_LOAD_PATH and
GUILE_LOAD_COMPILED_PATH to its scheme/ directory. GUILLEMOT_KEEP_TMP=1 keeps
the temporary directories for inspection. Command-line arguments, if any,
select the tests whose names contain one of them.
"""

import contextlib
import ctypes
import datetime
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
TOP_SRCDIR = os.path.abspath(os.environ.get("top_srcdir") or os.path.join(HERE, "..", ".."))
TOP_BUILDDIR = os.path.abspath(os.environ.get("top_builddir") or TOP_SRCDIR)
GUILLEMOT = os.environ.get("GUILLEMOT") or os.path.join(TOP_BUILDDIR, "guillemot")


def _sanitized():
    """Is the server built with AddressSanitizer (./configure --enable-sanitizers)?"""
    try:
        with open(GUILLEMOT, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


# Under ASan the allocator keeps freed memory in quarantine and adds shadow
# memory: resident sizes say nothing about the server's own use then.
SANITIZED = _sanitized()
EXAMPLES = os.path.join(TOP_SRCDIR, "examples")
QUICKSTART = os.path.join(EXAMPLES, "quickstart.scm")
MBOX_CONFIG = os.path.join(EXAMPLES, "mbox.scm")
HOSTNAME = "mx.example.test"

os.environ.setdefault("GUILE_LOAD_PATH", os.path.join(TOP_SRCDIR, "scheme"))
os.environ.setdefault("GUILE_LOAD_COMPILED_PATH", os.path.join(TOP_BUILDDIR, "scheme"))
os.environ.setdefault("GUILE_AUTO_COMPILE", "0")

DEFAULT_TIMEOUT = 30           # seconds per test unless @test says otherwise
SOCKET_TIMEOUT = 5             # seconds for any one socket operation


# ---------------------------------------------------------------------------
# TAP

_tests = []                    # (name, function, timeout)
_cleanups = []                 # callables run after the current test, last first
_servers = []                  # Server objects started by the current test


class TestTimeout(Exception):
    pass


class Skip(Exception):
    pass


def skip(reason):
    """End the current test as "ok N - name # SKIP reason"."""
    raise Skip(reason)


def test(name=None, timeout=DEFAULT_TIMEOUT):
    """Register the decorated function as a test named NAME."""
    def register(fn):
        _tests.append((name or fn.__name__, fn, timeout))
        return fn
    return register


def add_cleanup(fn):
    """Run FN when the current test ends (passed or not)."""
    _cleanups.append(fn)


def diag(text):
    """Print TEXT as TAP comment lines."""
    for line in str(text).splitlines() or [""]:
        sys.stdout.write("# " + line + "\n")
    sys.stdout.flush()


def _on_alarm(signum, frame):
    raise TestTimeout("test exceeded its time limit")


def _run_cleanups():
    errors = []
    while _cleanups:
        fn = _cleanups.pop()
        try:
            fn()
        except Exception:
            errors.append(traceback.format_exc())
    return errors


def run():
    """Run the registered tests, print TAP, exit 0 iff all passed."""
    selected = _tests
    if len(sys.argv) > 1:
        selected = [t for t in _tests if any(a in t[0] for a in sys.argv[1:])]
    print("1..%d" % len(selected), flush=True)
    signal.signal(signal.SIGALRM, _on_alarm)
    failed = 0
    for number, (name, fn, limit) in enumerate(selected, 1):
        started = time.monotonic()
        error = None
        skipped = None
        logs = []
        try:
            signal.setitimer(signal.ITIMER_REAL, limit)
            try:
                fn()
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except Skip as e:
            skipped = str(e)
        except BaseException as e:       # noqa: also KeyboardInterrupt, SystemExit
            if isinstance(e, KeyboardInterrupt):
                _run_cleanups()
                raise
            error = traceback.format_exc()
        # Collect server logs before cleanup removes their directories.
        if error:
            for srv in _servers:
                logs.append((srv, srv.log_tail(40)))
        try:
            # Cleanups get their own bounded time too.
            signal.setitimer(signal.ITIMER_REAL, 20)
            cleanup_errors = _run_cleanups()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        _servers.clear()
        if cleanup_errors and not error:
            error = "cleanup failed:\n" + "\n".join(cleanup_errors)
        elapsed = time.monotonic() - started
        if error:
            failed += 1
            print("not ok %d - %s" % (number, name), flush=True)
            diag(error.rstrip())
            for srv, tail in logs:
                diag("--- last lines of the server log (%s) ---" % srv.describe())
                diag(tail.rstrip())
        elif skipped is not None:
            print("ok %d - %s # SKIP %s" % (number, name, skipped), flush=True)
        else:
            print("ok %d - %s # %.2fs" % (number, name, elapsed), flush=True)
    sys.exit(1 if failed else 0)


# ---------------------------------------------------------------------------
# Small helpers

def wait_for(predicate, timeout=10.0, interval=0.05, what="condition"):
    """Poll PREDICATE until it returns a true value (returned) or TIMEOUT passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def free_port(family=socket.AF_INET, host="127.0.0.1"):
    """A port that was free on HOST a moment ago (bind port 0, then release)."""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ipv6_available():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def assert_equal(actual, expected, what="value"):
    if actual != expected:
        raise AssertionError("%s differs\n  expected: %r\n  actual:   %r" % (what, expected, actual))


def assert_in(needle, haystack, what="text"):
    if needle not in haystack:
        shown = haystack if len(haystack) < 4000 else haystack[:4000] + "..."
        raise AssertionError("%r not found in %s:\n%s" % (needle, what, shown))


def _set_pdeathsig():
    """In the child: die when the test process dies, whatever kills it."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)     # PR_SET_PDEATHSIG
    except Exception:
        pass


def run_guillemot(*args, timeout=15, input=None):
    """Run the binary to completion: returns CompletedProcess (text output)."""
    return subprocess.run([GUILLEMOT] + list(args), capture_output=True, text=True,
                          timeout=timeout, input=input, preexec_fn=_set_pdeathsig)


def make_tempdir(prefix="guillemot-test-"):
    """A temporary directory removed when the current test ends."""
    d = tempfile.mkdtemp(prefix=prefix)
    if not os.environ.get("GUILLEMOT_KEEP_TMP"):
        add_cleanup(lambda: shutil.rmtree(d, ignore_errors=True))
    return d


# ---------------------------------------------------------------------------
# The server

DATE_RE = rb"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d \+0000"
QUEUED_RE = re.compile(r"^250 2\.0\.0 Ok: queued as ([0-9A-Za-z]+)$")


class ServerError(Exception):
    pass


class Server:
    """The real server on free loopback ports, in a temporary state directory.

    Server(config=None, settings={}, config_text=None, ipv6=True)
      config: path of a configuration file (default examples/quickstart.scm);
      config_text: Scheme text written to DIR/guillemot.scm and used instead;
      settings: extra --set KEY=VALUE overrides (values converted with str);
      env: extra environment variables for the server process.
    Use as a context manager, or call start()/stop(); the harness kills it
    and removes its directory at the end of the test anyway.
    """

    def __init__(self, config=None, settings=None, config_text=None, ipv6=True, env=None):
        self.dir = tempfile.mkdtemp(prefix="guillemot-srv-")
        if not os.environ.get("GUILLEMOT_KEEP_TMP"):
            add_cleanup(lambda: shutil.rmtree(self.dir, ignore_errors=True))
        add_cleanup(self._reap)
        _servers.append(self)
        if config_text is not None:
            config = os.path.join(self.dir, "guillemot.scm")
            with open(config, "w", encoding="utf-8") as f:
                f.write(config_text)
        self.config = config or QUICKSTART
        self.settings = dict(settings or {})
        self.env = dict(os.environ, **(env or {}))
        self.ipv6 = ipv6 and ipv6_available()
        self.host = "127.0.0.1"
        self.port = None
        self.port6 = None
        self.proc = None
        self.log_path = os.path.join(self.dir, "server.log")
        self.starts = 0
        self._log_file = None

    # -- life cycle --

    def command(self):
        listen = "127.0.0.1:%d" % self.port
        if self.ipv6:
            listen += ",[::1]:%d" % self.port6
        cmd = [GUILLEMOT, "serve", "-c", self.config,
               "--set", "listen=" + listen,
               "--set", "state-dir=" + self.dir,
               "--set", "hostname=" + HOSTNAME]
        for key, value in self.settings.items():
            cmd += ["--set", "%s=%s" % (key, value)]
        return cmd

    def start(self, wait=True, fresh_ports=None):
        """Start the server; with WAIT, return once it answers on its port."""
        if self.proc and self.proc.poll() is None:
            raise ServerError("server already running")
        attempts = 3
        for attempt in range(attempts):
            if self.port is None or fresh_ports or attempt > 0:
                self.port = free_port()
                self.port6 = free_port(socket.AF_INET6, "::1") if self.ipv6 else None
            self._log_offset = self._log_size()
            self._log_file = open(self.log_path, "ab")
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                         stdout=self._log_file, stderr=self._log_file,
                                         cwd=self.dir, env=self.env, preexec_fn=_set_pdeathsig)
            self.starts += 1
            if not wait:
                return self
            try:
                self.wait_ready()
                return self
            except ServerError:
                text = self.log_text()[self._log_offset:]
                if "Address already in use" in text and attempt + 1 < attempts:
                    self.kill()
                    continue                      # somebody took the port: try others
                raise
        return self

    def _log_size(self):
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def wait_ready(self, timeout=10.0):
        """Wait until the port answers with a 220 greeting (then QUIT)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError("server exited with status %s while starting:\n%s"
                                  % (self.proc.returncode, self.log_tail(20)))
            try:
                with socket.create_connection((self.host, self.port), timeout=2) as s:
                    f = s.makefile("rb")
                    greeting = f.readline()
                    if greeting.startswith(b"220 "):
                        s.sendall(b"QUIT\r\n")
                        f.readline()
                        return
                    last = greeting
            except OSError as e:
                last = e
            time.sleep(0.05)
        raise ServerError("server not ready after %.0fs (last: %r):\n%s"
                          % (timeout, last, self.log_tail(20)))

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=10.0):
        """SIGTERM, wait (bounded), return the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def wait_exit(self, timeout=10.0):
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise ServerError("server did not exit within %.0fs; killed" % timeout)
        finally:
            self._close_log()
        return code

    def kill(self):
        """SIGKILL, wait, return the status (-9)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait(5)
        self._close_log()
        return code

    def restart(self, kill=False):
        """Stop (or kill) and start again on the same ports and directory."""
        code = self.kill() if kill else self.stop()
        self.start()
        return code

    def _close_log(self):
        if self._log_file:
            self._log_file.close()
            self._log_file = None

    def _reap(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self._close_log()

    def __enter__(self):
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self._reap()
        return False

    def describe(self):
        return "%s, ports %s/%s, dir %s" % (os.path.basename(self.config), self.port,
                                              self.port6, self.dir)

    # -- log --

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_since_start(self):
        """The log written since the last start()."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode("utf-8", "replace")
        except (OSError, AttributeError):
            return ""

    def log_tail(self, n=30):
        return "\n".join(self.log_text().splitlines()[-n:])

    def wait_log(self, pattern, timeout=10.0, count=1, since_start=False):
        """Wait until regex PATTERN matches COUNT times in the log (or only in
        what the last start wrote); returns the matches."""
        rx = re.compile(pattern)
        def found():
            m = rx.findall(self.log_since_start() if since_start else self.log_text())
            return m if len(m) >= count else None
        return wait_for(found, timeout, what="log line /%s/ x%d" % (pattern, count))

    # -- mailboxes and spool --

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def maildir(self, local):
        return self.path("mail", local, "Maildir")

    def maildir_files(self, local, sub="new"):
        d = os.path.join(self.maildir(local), sub)
        try:
            return sorted(os.path.join(d, n) for n in os.listdir(d))
        except FileNotFoundError:
            return []

    def wait_maildir(self, local, n, timeout=10.0, settle=0.0):
        """Wait until exactly N files are in LOCAL's Maildir/new/; return their paths.
        With SETTLE, keep watching that long afterwards to catch extra copies."""
        files = wait_for(lambda: len(self.maildir_files(local)) >= n and self.maildir_files(local),
                         timeout, what="%d file(s) in %s/new" % (n, self.maildir(local)))
        if settle:
            time.sleep(settle)
            files = self.maildir_files(local)
        if len(files) != n:
            raise AssertionError("expected %d file(s) in %s/new, found %d: %r"
                                 % (n, local, len(files), files))
        return files

    def mbox_path(self, local):
        return self.path("mail", local + ".mbox")

    def spool_files(self, sub):
        d = self.path("spool", sub)
        try:
            return sorted(os.listdir(d))
        except FileNotFoundError:
            return []

    def wait_queue_empty(self, timeout=10.0):
        wait_for(lambda: not self.spool_files("queue"), timeout, what="an empty spool/queue")

    # -- clients --

    def connect(self, ipv6=False, timeout=SOCKET_TIMEOUT, greet=True):
        """A raw SmtpClient; with GREET, the 220 has been read."""
        if ipv6:
            c = SmtpClient(("::1", self.port6), timeout)
        else:
            c = SmtpClient((self.host, self.port), timeout)
        if greet:
            c.expect(220)
        return c

    def smtplib(self, ipv6=False, helo_name="client.example.test", timeout=SOCKET_TIMEOUT):
        import smtplib
        host, port = ("::1", self.port6) if ipv6 else (self.host, self.port)
        s = smtplib.SMTP(host, port, local_hostname=helo_name, timeout=timeout)
        add_cleanup(lambda: _quietly(s.close))
        return s


def _quietly(fn):
    try:
        fn()
    except Exception:
        pass


# ---------------------------------------------------------------------------
# A raw SMTP client

class Reply:
    def __init__(self, code, lines):
        self.code = code
        self.lines = lines               # text after "CODE-" / "CODE "

    @property
    def text(self):
        return "\n".join(self.lines)

    @property
    def last(self):
        return "%d %s" % (self.code, self.lines[-1])

    def __repr__(self):
        return "Reply(%d, %r)" % (self.code, self.lines)


class SmtpClient:
    """Bytes over a socket, replies parsed, every operation bounded in time."""

    def __init__(self, address, timeout=SOCKET_TIMEOUT):
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        add_cleanup(self.close)
        self.sock.connect(address)
        self.buf = b""
        self.transcript = []

    def close(self):
        _quietly(self.sock.close)

    def recent(self, n=8):
        """The last N exchanges, long data shortened, for error messages."""
        return [(who, data if len(data) <= 160 else data[:120] + b"...[%d bytes]" % len(data))
                for who, data in self.transcript[-n:]]

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.transcript.append(("C", data))
        self.sock.sendall(data)

    def cmd(self, line):
        """Send LINE + CRLF and return the reply."""
        self.send((line.encode("utf-8") if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed by the server; transcript: %r"
                                  % self.recent())
        self.buf += data

    def readline(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        self.transcript.append(("S", line))
        return line

    def reply(self):
        """One whole (possibly multi-line) reply."""
        lines = []
        while True:
            line = self.readline()
            m = re.match(rb"^(\d{3})([ -])(.*)$", line, re.S)
            if not m:
                raise AssertionError("malformed reply line %r" % line)
            lines.append(m.group(3).decode("utf-8", "replace"))
            if m.group(2) == b" ":
                return Reply(int(m.group(1)), lines)

    def expect(self, code, prefix=None, reply=None):
        """Read a reply (or check REPLY) and assert its code and text prefix."""
        r = reply if reply is not None else self.reply()
        if r.code != code or (prefix is not None and not r.lines[-1].startswith(prefix)):
            raise AssertionError("expected %s %s, got %r; transcript: %r"
                                 % (code, prefix or "", r, self.recent()))
        return r

    def send_expect(self, line, code, prefix=None):
        return self.expect(code, prefix, self.cmd(line))

    def ehlo(self, name="client.example.test"):
        return self.send_expect("EHLO " + name, 250)

    def closed_by_server(self, timeout=SOCKET_TIMEOUT):
        """True when the server closes the connection (EOF or reset) within TIMEOUT."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.buf += data
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def send_message(self, sender, rcpts, body, smtputf8=False):
        """A whole DATA transaction after EHLO; returns the queue id."""
        self.send_expect("MAIL FROM:<%s>%s" % (sender, " SMTPUTF8" if smtputf8 else ""), 250)
        for r in rcpts:
            self.send_expect("RCPT TO:<%s>" % r, 250)
        self.send_expect("DATA", 354)
        self.send(body)
        return queue_id(self.expect(250, "2.0.0 Ok: queued as"))


def queue_id(reply):
    """The queue id of a "250 2.0.0 Ok: queued as ID" reply (Reply or text)."""
    text = reply.last if isinstance(reply, Reply) else reply
    if isinstance(text, bytes):
        text = text.decode()
    m = QUEUED_RE.match(text.strip())
    if not m:
        raise AssertionError("not a queued reply: %r" % text)
    return m.group(1)


# ---------------------------------------------------------------------------
# What a delivered message looks like

def received_block(helo, client, qid, rcpts, protocol="ESMTP"):
    """The expected Received: header, as a regex on bytes (the date varies)."""
    v6 = ":" in client
    head = ("Received: from %s ([%s%s])\n\tby %s (Guillemot) with %s id %s"
            % (helo, "IPv6:" if v6 else "", client, HOSTNAME, protocol, qid)).encode("utf-8")
    if len(rcpts) == 1:
        head += ("\n\tfor <%s>" % rcpts[0]).encode("utf-8")
    return re.escape(head) + b"; (" + DATE_RE + b")\n"


def check_delivered(content, sender, rcpt, helo, client, qid, rcpts, message,
                    protocol="ESMTP"):
    """Assert that CONTENT (bytes of a Maildir file) is exactly the expected
    delivery of MESSAGE (the message before dot-stuffing, CRLF lines)."""
    expected_head = ("Return-Path: <%s>\nDelivered-To: %s\n" % (sender, rcpt)).encode("utf-8")
    body = as_stored(message)
    rx = re.compile(re.escape(expected_head) + received_block(helo, client, qid, rcpts, protocol)
                    + re.escape(body) + rb"\Z", re.S)
    m = rx.match(content)
    if not m:
        raise AssertionError("delivered file differs from the expected bytes\n"
                             "  expected (regex): %r\n  actual:           %r" % (rx.pattern, content))
    date = datetime.datetime.strptime(m.group(1).decode(), "%a, %d %b %Y %H:%M:%S +0000")
    date = date.replace(tzinfo=datetime.timezone.utc)
    skew = abs((datetime.datetime.now(datetime.timezone.utc) - date).total_seconds())
    if skew > 120:
        raise AssertionError("Received: date %s is %.0fs away from now" % (m.group(1), skew))
    return m


def as_stored(message):
    """What the server stores for MESSAGE (the message itself, CRLF lines, not
    yet dot-stuffed): CRLF -> LF, a final line end added when missing."""
    if isinstance(message, str):
        message = message.encode("utf-8")
    if message and not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message.replace(b"\r\n", b"\n")


def stuff(message):
    """MESSAGE (CRLF lines) dot-stuffed and terminated, ready to send after DATA."""
    if isinstance(message, str):
        message = message.encode("utf-8")
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    lines = message.split(b"\r\n")[:-1]
    return b"".join((b"." + l if l.startswith(b".") else l) + b"\r\n" for l in lines) + b".\r\n"


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


@contextlib.contextmanager
def time_limit(seconds, what="operation"):
    """Assert that the block finishes within SECONDS (measured, not enforced)."""
    t0 = time.monotonic()
    yield
    dt = time.monotonic() - t0
    if dt > seconds:
        raise AssertionError("%s took %.1fs, more than %.1fs" % (what, dt, seconds))


# ---------------------------------------------------------------------------
# Conversations, shared by the policy, rule-module and MIME tests

def start_unprobed(srv, timeout=10.0):
    """Start SRV without the 220 probe (which a connect rule may count or
    refuse): wait for the "started:" log line instead."""
    srv.start(wait=False)
    def ready():
        if srv.proc.poll() is not None:
            raise ServerError("server exited with status %s:\n%s"
                              % (srv.proc.returncode, srv.log_tail(20)))
        return "started: Guillemot" in srv.log_since_start()
    wait_for(ready, timeout, what="the server's started: line")
    return srv


def expect_line(c, line):
    """Read one reply and assert that it is exactly LINE (its last line)."""
    r = c.reply()
    if r.last != line:
        raise AssertionError("expected reply %r, got %r; transcript: %r" % (line, r, c.recent()))
    return r


def cmd_line(c, command, line):
    """Send COMMAND and assert that the reply is exactly LINE."""
    c.send(command + "\r\n")
    return expect_line(c, line)


def send_transaction(c, rcpts, body, sender):
    """MAIL, RCPTs (all expected 250), DATA: returns the queue id."""
    c.send_expect("MAIL FROM:<%s>" % sender, 250)
    for r in rcpts:
        c.send_expect("RCPT TO:<%s>" % r, 250)
    c.send_expect("DATA", 354)
    c.send(stuff(body))
    return queue_id(c.expect(250, "2.0.0 Ok: queued as"))

