"""Live operations end to end: `guillemot reload` and SIGHUP load the
configuration file again (new sessions get the new rules, sessions in
progress keep theirs, a broken file changes nothing), under load too; the
control directory and its sockets are private; the REPL on repl.sock answers
(rules), (sessions), (queue), (reload!) and changes rules live."""

import sys
sys.dont_write_bytecode = True     # no __pycache__ in the source tree

import os
import re
import signal
import socket
import stat
import subprocess
import threading
import time

from harness import (GUILLEMOT, HOSTNAME, Server, assert_equal, assert_in,
                     free_port, queue_id, read_file, run, run_guillemot, stuff, test)

HELO = "client.example.test"
SENDER = "sender@origin.test"
MSG = b"From: sender@origin.test\r\nSubject: reload\r\n\r\nHello.\r\n"

BASE = """\
(use-modules (guillemot))
(define-server #:hostname "mx.example.test")
(local-domains "example.test" "localhost")
(deliver-local (maildir "mail/~a/Maildir"))
"""

# Rule set A refuses a-only@, rule set B refuses b-only@.
RULES_A = """
(rule rcpt "rule A"
  (lambda (s rcpt)
    (if (string-prefix? "a-only@" rcpt) (reject 550 "5.7.1 refused by rule A") (next))))
"""
RULES_B = """
(rule rcpt "rule B"
  (lambda (s rcpt)
    (if (string-prefix? "b-only@" rcpt) (reject 550 "5.7.1 refused by rule B") (next))))
(rule data "stamp B" (lambda (s msg) (header-add! msg "X-Rules" "B") (next)))
"""

PROMPT = re.compile(rb"scheme@\(guillemot live\)(?: \[\d+\])?> $")


# ---------------------------------------------------------------------------
# Helpers

def start(rules, **kw):
    srv = Server(config_text=BASE + rules, **kw)
    srv.start()
    return srv


def rewrite(srv, text):
    """Replace the server's configuration file (atomically, as an editor would)."""
    tmp = srv.config + ".new"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, srv.config)


def reload_command(srv, config=None):
    """`guillemot reload` with the file and overrides the server was started with."""
    args = srv.command()[2:]                    # -c FILE --set ...
    if config:
        args[1] = config
    return run_guillemot("reload", *args, timeout=60)


def reload_ok(srv, count):
    p = reload_command(srv)
    assert p.returncode == 0, "reload failed (%d):\n%s%s" % (p.returncode, p.stdout, p.stderr)
    assert_in("reloaded %s: %s" % (srv.config, count), p.stdout, "reload output")
    return p


def session(srv):
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    return c


def rcpt_line(c, rcpt):
    return c.cmd("RCPT TO:<%s>" % rcpt).last


def assert_rules(c, a_only, b_only):
    """The replies C gets for a-only@ and b-only@ (then RSET and a new MAIL)."""
    got = (rcpt_line(c, "a-only@example.test"), rcpt_line(c, "b-only@example.test"))
    assert_equal(got, (a_only, b_only), "replies to RCPT a-only@, b-only@")
    c.send_expect("RSET", 250)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)


RULE_A_REFUSES = ("550 5.7.1 refused by rule A", "250 2.1.5 Ok")
RULE_B_REFUSES = ("250 2.1.5 Ok", "550 5.7.1 refused by rule B")


def finish(c, local):
    """A transaction to LOCAL@example.test on C (MAIL already given); its queue id."""
    c.send_expect("RCPT TO:<%s@example.test>" % local, 250)
    c.send_expect("DATA", 354)
    c.send(stuff(MSG))
    return queue_id(c.expect(250, "2.0.0 Ok: queued as"))


class Repl:
    """A client of STATE-DIR/control/repl.sock that waits for each prompt."""

    def __init__(self, srv, timeout=10):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(srv.path("control", "repl.sock"))
        self.prompt = None
        self.banner = self.until_prompt()

    def until_prompt(self):
        data = b""
        while not PROMPT.search(data):
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError("REPL closed; got %r" % data)
            data += chunk
        self.prompt = PROMPT.search(data).group(0).decode()
        return PROMPT.sub(b"", data).decode("utf-8", "replace")

    def error_level(self):
        """After an error the REPL is in a debugger level: "... [1]> "."""
        m = re.search(r"\[(\d+)\]", self.prompt)
        return int(m.group(1)) if m else 0

    def eval(self, expression):
        """Send EXPRESSION; return what the REPL printed before the next prompt."""
        self.sock.sendall(expression.encode("utf-8") + b"\n")
        return self.until_prompt()

    def close(self):
        try:
            self.sock.sendall(b",quit\n")
        except OSError:
            pass
        self.sock.close()


def delivered_header(srv, local, name):
    files = srv.wait_maildir(local, 1)
    head = read_file(files[0]).split(b"\n\n", 1)[0].decode()
    m = re.search(r"^%s: (.*)$" % re.escape(name), head, re.M)
    return m.group(1) if m else None


# ---------------------------------------------------------------------------
# Reload

@test("guillemot reload: new sessions get the new rules; a session in a transaction keeps the old")
def _():
    srv = start(RULES_A)
    old = session(srv)
    assert_rules(old, *RULE_A_REFUSES)
    rcpt_line(old, "kept@example.test")                     # mid-transaction from here on
    rewrite(srv, BASE + RULES_B)
    p = reload_ok(srv, "2 rules")
    assert_equal(p.stderr, "", "reload stderr")
    srv.wait_log(r"reload requested \(control\.sock\): loading %s" % re.escape(srv.config))
    srv.wait_log(r"reloaded %s: 2 rules" % re.escape(srv.config))

    new = session(srv)
    assert_rules(new, *RULE_B_REFUSES)
    # The old session, still in its transaction, goes on with rule set A ...
    got = (rcpt_line(old, "a-only@example.test"), rcpt_line(old, "b-only@example.test"))
    assert_equal(got, RULE_A_REFUSES, "old session after the reload")
    old.send_expect("DATA", 354)
    old.send(stuff(MSG))
    qid = queue_id(old.expect(250, "2.0.0 Ok: queued as"))
    # ... and without B's data rule; the new session's message has it.
    assert_equal(delivered_header(srv, "kept", "X-Rules"), None, "X-Rules of the old session")
    finish(new, "fresh")
    assert_equal(delivered_header(srv, "fresh", "X-Rules"), "B", "X-Rules of the new session")
    assert qid in os.path.basename(srv.wait_maildir("kept", 1)[0])


@test("SIGHUP reloads: new sessions get the new rules, the old session keeps its own")
def _():
    srv = start(RULES_A)
    old = session(srv)
    rewrite(srv, BASE + RULES_B)
    srv.signal(signal.SIGHUP)
    srv.wait_log(r"reload requested \(SIGHUP\)")
    srv.wait_log(r"reloaded %s: 2 rules" % re.escape(srv.config))
    assert_rules(session(srv), *RULE_B_REFUSES)
    assert_rules(old, *RULE_A_REFUSES)
    # And back again.
    rewrite(srv, BASE + RULES_A)
    srv.signal(signal.SIGHUP)
    srv.wait_log(r"reloaded %s: 1 rule\b" % re.escape(srv.config))
    assert_rules(session(srv), *RULE_A_REFUSES)
    assert srv.running(), "the server stopped"


def broken_files(srv):
    """(name, text, line, column, message) of files that must not load. Each
    first changes settings, which must come back as they were."""
    head = BASE + '(define-server #:max-recipients 2 #:hostname "broken.example")\n'
    n = head.count("\n")
    return [
        ("syntax error", head + RULES_B + '(rule rcpt "open" (lambda (s r)\n',
         None, None, "unexpected end of input"),
        ("unknown stage", head + RULES_B + '(rule bogus "x" (lambda (s) (next)))\n',
         n + RULES_B.count("\n") + 1, 1, "rule: unknown stage bogus"),
        ("error in a form", head + '(local-domains 42)\n', n + 1, 1,
         "local-domains: expected domain names as strings"),
    ]


def assert_old_configuration(srv):
    c = srv.connect(greet=False)
    c.expect(220, HOSTNAME)                                 # not broken.example
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    for i in range(3):                                       # max-recipients 2 did not stay
        c.send_expect("RCPT TO:<r%d@example.test>" % i, 250)
    c.send_expect("RSET", 250)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    assert_rules(c, *RULE_A_REFUSES)
    return c


@test("a broken file: reload exits 1 with FILE:LINE:COLUMN; SIGHUP logs it; old rules and settings stay")
def _():
    srv = start(RULES_A)
    good = read_file(srv.config).decode()
    for name, text, line, column, message in broken_files(srv):
        rewrite(srv, text)
        p = reload_command(srv)
        assert_equal(p.returncode, 1, "%s: reload exit status (stdout %r)" % (name, p.stdout))
        where = "%s:%s:%s: " % (srv.config, line, column) if line else srv.config + ":"
        first = p.stderr.splitlines()[0] if p.stderr else ""
        assert first.startswith(where) and message in first, \
            "%s: reload stderr\n  expected: %s...%s\n  actual: %r" % (name, where, message, p.stderr)
        assert_in("not asked to reload", p.stderr, "%s: reload stderr" % name)
        assert_equal(p.stdout, "", "%s: reload stdout" % name)
        # The server was not asked; SIGHUP asks it.
        count = len(re.findall(r"reload failed: ", srv.log_text()))
        srv.signal(signal.SIGHUP)
        found = srv.wait_log(r"reload failed: (.*)", count=count + 1)
        assert re.match(r"%s\d+:\d+: " % re.escape(srv.config + ":"), found[-1]) \
            and message in found[-1], "%s: log line %r" % (name, found[-1])
        if line:
            assert found[-1].startswith(where), (name, found[-1], where)
        assert srv.running(), "the server stopped"
        assert_old_configuration(srv)
    # A good file still reloads after all that, and only then things change.
    rewrite(srv, good.replace(RULES_A, RULES_B))
    reload_ok(srv, "2 rules")
    assert_rules(session(srv), *RULE_B_REFUSES)


@test("a file that fails only in the server: reload prints the server's FILE:LINE:COLUMN and exits 1")
def _():
    # The server has GM_TEST_SERVER in its environment, the command not: the
    # command's own check passes, the server's load fails.
    srv = start(RULES_A, env={"GM_TEST_SERVER": "1"})
    text = BASE + RULES_A + '(when (getenv "GM_TEST_SERVER")\n  (rule bogus "x" (lambda (s) (next))))\n'
    line = text.count("\n") - 1
    rewrite(srv, text)
    p = reload_command(srv)
    assert_equal(p.returncode, 1, "exit status (stdout %r)" % p.stdout)
    assert p.stderr.startswith("%s:%d:1: " % (srv.config, line)), p.stderr
    assert_in("rule: unknown stage bogus", p.stderr, "stderr")
    assert_in("the server keeps its previous configuration", p.stderr, "stderr")
    srv.wait_log(r"reload failed: %s:%d:1: " % (re.escape(srv.config), line))
    assert_rules(session(srv), *RULE_A_REFUSES)


@test("reload without a running server: exit 1 naming the socket")
def _():
    srv = Server(config_text=BASE + RULES_A)             # never started
    srv.port, srv.port6 = free_port(), None
    srv.ipv6 = False
    p = reload_command(srv)
    assert_equal(p.returncode, 1, "exit status")
    assert_in("cannot reach the server at %s" % srv.path("control", "control.sock"), p.stderr,
              "stderr")


GENERATION = """
(rule data "generation"
  (lambda (s msg) (header-add! msg "X-Generation" "%d") (next)))
"""


@test("reload under load: 10 reloads while 10 clients send; every message delivered, "
      "each connection keeps one rule set", timeout=120)
def _():
    srv = start(GENERATION % 0)
    errors, sent = [], []
    lock = threading.Lock()
    reloads_done = threading.Event()

    def client(t):
        try:
            # Two connections at least, and on until the reloads are done
            # (a slow build, under sanitizers, reloads slowly).
            conn = 0
            while conn < 2 or (not reloads_done.is_set() and conn < 100):
                conn += 1
                c = srv.connect(timeout=30)
                c.ehlo(HELO)
                for m in range(5):
                    local = "t%dc%dm%d" % (t, conn, m)
                    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
                    qid = finish(c, local)
                    with lock:
                        sent.append((t, conn, local, qid))
                    time.sleep(0.03)
                c.send_expect("QUIT", 221)
                c.close()
        except Exception as e:                           # noqa: reported below
            with lock:
                errors.append("client %d: %r" % (t, e))

    threads = [threading.Thread(target=client, args=(t,)) for t in range(10)]
    for th in threads:
        th.start()
    for generation in range(1, 11):
        time.sleep(0.1)
        rewrite(srv, BASE + GENERATION % generation)
        if generation % 2:
            reload_ok(srv, "1 rule")
        else:
            before = len(re.findall(r"reloaded ", srv.log_text()))
            srv.signal(signal.SIGHUP)
            srv.wait_log(r"reloaded ", count=before + 1)
    reloads_done.set()
    for th in threads:
        th.join(60)
    assert not errors, "clients failed:\n" + "\n".join(errors)
    assert len(sent) >= 100, "%d messages acknowledged, expected at least 100" % len(sent)
    assert_equal(len(re.findall(r"reloaded %s" % re.escape(srv.config), srv.log_text())), 10,
                 "reloads logged")
    generations = {}
    for t, conn, local, qid in sent:
        g = delivered_header(srv, local, "X-Generation")
        assert g is not None, "%s: no X-Generation" % local
        generations.setdefault((t, conn), set()).add(g)
    mixed = {k: v for k, v in generations.items() if len(v) > 1}
    assert not mixed, "connections whose messages saw two rule sets: %r" % mixed
    seen = set().union(*generations.values())
    assert len(seen) > 1, "every connection saw generation %r: the reloads came too late" % seen
    srv.wait_queue_empty(30)
    assert "policy error" not in srv.log_text()


# ---------------------------------------------------------------------------
# The control directory

@test("STATE-DIR/control is 0700, control.sock and repl.sock 0600; removed at exit, "
      "stale ones replaced, a second server refused")
def _():
    srv = start(RULES_A)
    d = srv.path("control")
    assert_equal(oct(stat.S_IMODE(os.lstat(d).st_mode)), "0o700", "mode of control/")
    for name in ("control.sock", "repl.sock"):
        st = os.lstat(os.path.join(d, name))
        assert stat.S_ISSOCK(st.st_mode), "%s is not a socket" % name
        assert_equal(oct(stat.S_IMODE(st.st_mode)), "0o600", "mode of %s" % name)
    # Another server with the same state-dir (other ports) is refused.
    other = Server(config=srv.config, settings={"state-dir": srv.dir}, ipv6=False)
    other.start(wait=False)
    code = other.wait_exit(10)
    assert_equal(code, 1, "second server's exit status")
    assert_in("another server is running with this state-dir", other.log_text(), "its log")
    assert srv.running()
    # Killed: the sockets stay behind, and the next start replaces them.
    srv.restart(kill=True)
    c = session(srv)
    assert_rules(c, *RULE_A_REFUSES)
    c.send_expect("QUIT", 221)
    assert_equal(oct(stat.S_IMODE(os.lstat(d).st_mode)), "0o700", "mode of control/ after restart")
    # A clean exit removes the sockets.
    assert_equal(srv.stop(), 0, "exit status")
    assert not os.path.exists(os.path.join(d, "repl.sock")), "repl.sock left after a clean exit"
    assert not os.path.exists(os.path.join(d, "control.sock")), "control.sock left"
    # A control directory with a loose mode is tightened.
    os.chmod(d, 0o755)
    srv.start()
    assert_equal(oct(stat.S_IMODE(os.lstat(d).st_mode)), "0o700", "mode of control/ after chmod 755")
    reload_ok(srv, "1 rule")


def control_request(srv, data):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(15)
        s.connect(srv.path("control", "control.sock"))
        s.sendall(data)
        answer = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return answer.decode()
            answer += chunk


@test("control.sock: one line in, ok or error and the report out; unknown requests refused")
def _():
    srv = start(RULES_A)
    assert_equal(control_request(srv, b"reload\n"), "ok\nreloaded %s: 1 rule\n" % srv.config,
                 "answer to reload")
    assert_equal(control_request(srv, b"reload\r\n"), "ok\nreloaded %s: 1 rule\n" % srv.config,
                 "answer to reload with CRLF")
    assert_equal(control_request(srv, b"status\n"),
                 'error\nunknown request "status" (known: reload)\n', "answer to status")
    assert_equal(control_request(srv, b"x" * 300), "error\nrequest too long\n", "long request")
    rewrite(srv, BASE + '(rule bogus "x" (lambda (s) (next)))\n')
    answer = control_request(srv, b"reload\n")
    assert answer.startswith("error\n%s:5:1: rule: unknown stage bogus (known: " % srv.config) \
        and answer.endswith(")\n") and answer.count("\n") == 2, answer
    assert srv.running()


# ---------------------------------------------------------------------------
# The REPL

@test("REPL: (rules), (sessions) with a live session, (queue), (reload!) and a broken (reload!)")
def _():
    srv = start(RULES_A)
    repl = Repl(srv)
    assert_in("Enter `,help' for help.", repl.banner, "banner")
    out = repl.eval("(rules)")
    assert_in('((rcpt "rule A" "%s:6"))' % srv.config, out, "(rules)")

    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    c.send_expect("RCPT TO:<someone@example.test>", 250)
    port = c.sock.getsockname()[1]
    out = repl.eval("(sessions)")
    for needle in ('(client-address . "127.0.0.1")', "(client-port . %d)" % port,
                   '(helo . "%s")' % HELO, '(sender . "%s")' % SENDER,
                   '(recipients "someone@example.test")', "(state . transaction)",
                   "(local-port . %d)" % srv.port):
        assert_in(needle, out, "(sessions)")
    out = repl.eval("(map (lambda (s) (assq-ref s 'state)) (sessions))")
    assert_in("(transaction)", out, "states")

    out = repl.eval("(queue)")
    assert re.search(r"\$\d+ = \(\)", out), out
    # What is in spool/queue/ (planted: a real message would be delivered at once).
    for name in ("06611A00000002", "06611A00000001", ".hidden"):
        open(srv.path("spool", "queue", name), "w").close()
    out = repl.eval("(queue)")
    assert_in('("06611A00000001" "06611A00000002")', out, "(queue)")
    for name in ("06611A00000002", "06611A00000001", ".hidden"):
        os.unlink(srv.path("spool", "queue", name))
    c.send_expect("QUIT", 221)

    rewrite(srv, BASE + RULES_B)
    out = repl.eval("(reload!)")
    assert re.search(r"\$\d+ = #t", out), out
    srv.wait_log(r"reload requested \(REPL\)")
    out = repl.eval("(rules)")
    assert_in('(rcpt "rule B" "%s:6")' % srv.config, out, "(rules) after (reload!)")
    assert_rules(session(srv), *RULE_B_REFUSES)

    rewrite(srv, BASE + '(rule bogus "x" (lambda (s) (next)))\n')
    out = repl.eval("(reload!)")
    assert re.search(r'\$\d+ = "%s:5:1: rule: unknown stage bogus' % re.escape(srv.config), out), out
    assert_in('(rcpt "rule B"', repl.eval("(rules)"), "(rules) after a failed (reload!)")
    assert_rules(session(srv), *RULE_B_REFUSES)
    repl.close()


@test("REPL: (rule ...) and live-rule change the rules of new sessions only; drop-rule; errors")
def _():
    srv = start(RULES_A)
    old = session(srv)
    repl = Repl(srv)
    out = repl.eval('(rule rcpt "live" (lambda (s r) (if (string-prefix? "live@" r) '
                    '(reject 550 "5.7.1 live rule") (next))))')
    assert re.search(r"\$\d+ = added", out), out
    assert_in('(rcpt "live" "REPL")', repl.eval("(rules)"), "(rules)")
    c = session(srv)
    assert_equal(rcpt_line(c, "live@example.test"), "550 5.7.1 live rule", "new session")
    assert_equal(rcpt_line(c, "a-only@example.test"), RULE_A_REFUSES[0], "file rule kept")
    assert_equal(rcpt_line(old, "live@example.test"), "250 2.1.5 Ok", "session from before")

    # Same stage and name: replaced in place.
    out = repl.eval('(live-rule \'rcpt "rule A" (lambda (s r) (next)))')
    assert re.search(r"\$\d+ = replaced", out), out
    out = repl.eval("(rules)")
    assert_in('((rcpt "rule A" "REPL") (rcpt "live" "REPL"))', out, "(rules)")
    assert_equal(rcpt_line(session(srv), "a-only@example.test"), "250 2.1.5 Ok", "replaced rule")

    out = repl.eval("(drop-rule 'rcpt \"live\")")
    assert re.search(r"\$\d+ = #t", out), out
    assert_equal(rcpt_line(session(srv), "live@example.test"), "250 2.1.5 Ok", "dropped rule")
    assert re.search(r"\$\d+ = #f", repl.eval("(drop-rule 'rcpt \"live\")"))

    # Mistakes are the REPL's errors, the rules stay as they were.
    for expression, message in (
            ('(rule bogus "x" (lambda (s) (next)))', "rule: unknown stage bogus"),
            ('(rule rcpt "x" (lambda (s) (next)))', "the procedure must take 2 arguments"),
            ('(rule rcpt "x" (lambda (s r) (reject 450 "no")))', "needs a 5xx code")):
        out = repl.eval(expression)
        assert_in(message, out, expression)
        assert_equal(repl.error_level(), 1, "debugger level after %s" % expression)
        repl.eval(",q")                                    # back to the top level
        assert_equal(repl.error_level(), 0, "level after ,q")
    out = repl.eval("(rules)")
    assert_in('((rcpt "rule A" "REPL"))', out, "(rules) after mistakes")
    # A reload takes the file's rules again.
    assert re.search(r"\$\d+ = #t", repl.eval("(reload!)"))
    assert_in('((rcpt "rule A" "%s:6"))' % srv.config, repl.eval("(rules)"), "(rules)")
    repl.close()


@test("guillemot repl -c FILE relays a piped session and exits 0 at the end of input")
def _():
    srv = start(RULES_A)
    p = subprocess.run([GUILLEMOT, "repl"] + srv.command()[2:],
                       input="(rules)\n(length (sessions))\n", capture_output=True, text=True,
                       timeout=20)
    assert_equal(p.returncode, 0, "exit status (stderr %r)" % p.stderr)
    assert_in('$1 = ((rcpt "rule A" "%s:6"))' % srv.config, p.stdout, "output")
    assert_in("$2 = 0", p.stdout, "output")
    p = run_guillemot("repl", "--help")
    assert_equal(p.returncode, 0, "repl --help")
    assert_in("Usage: guillemot repl -c FILE", p.stdout, "repl --help")
    p = run_guillemot("reload", "--help")
    assert_in("Usage: guillemot reload -c FILE", p.stdout, "reload --help")


# ---------------------------------------------------------------------------
# Settings that need a restart

class FileListenServer(Server):
    """The listen address comes from the file (no --set listen), so that a
    reload can change it."""

    def __init__(self, extra):
        Server.__init__(self, ipv6=False)
        self.extra = extra
        self.config = os.path.join(self.dir, "guillemot.scm")

    def text(self, port, extra=""):
        return (BASE + '(define-server #:listen \'("127.0.0.1:%d"))\n' % port + self.extra
                + extra + RULES_A)

    def args(self):
        return ["-c", self.config, "--set", "state-dir=" + self.dir, "--set", "hostname=" + HOSTNAME]

    def command(self):
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(self.text(self.port))
        return [GUILLEMOT, "serve"] + self.args()


@test("a changed listen (and workers) is kept with a warning; the other settings apply")
def _():
    srv = FileListenServer("(define-server #:workers 4)\n")
    srv.start()
    new_port = free_port()
    text = srv.text(new_port, "(define-server #:workers 2 #:max-recipients 2)\n")
    rewrite(srv, text.replace("(define-server #:workers 4)\n", ""))
    p = run_guillemot("reload", *srv.args(), timeout=60)
    assert_equal(p.returncode, 0, "reload exit status (stderr %r)" % p.stderr)
    assert_in("warning: listen changed (to 127.0.0.1:%d): restart to apply it; the server keeps "
              "127.0.0.1:%d" % (new_port, srv.port), p.stdout, "reload output")
    assert_in("warning: workers changed (to 2): restart to apply it; the server keeps 4",
              p.stdout, "reload output")
    srv.wait_log(r"warning: reload: listen changed \(to 127\.0\.0\.1:%d\)" % new_port)
    # Still on the old port, not on the new one.
    c = session(srv)
    with socket.socket() as s:
        s.settimeout(2)
        assert s.connect_ex(("127.0.0.1", new_port)) != 0, "the server listens on the new port"
    # max-recipients applied at once.
    c.send_expect("RCPT TO:<one@example.test>", 250)
    c.send_expect("RCPT TO:<two@example.test>", 250)
    c.send_expect("RCPT TO:<three@example.test>", 452)
    c.send_expect("QUIT", 221)
    # Stops and restarts cleanly on the new address.
    assert_equal(srv.stop(), 0, "exit status")


@test("#:delivery 'hold keeps accepted mail queued across a restart; a reload to 'run delivers it")
def _():
    hold = BASE.replace('(define-server #:hostname "mx.example.test")',
                        '(define-server #:hostname "mx.example.test" #:delivery \'hold)')
    srv = Server(config_text=hold)
    srv.start()
    srv.wait_log(r"queue: delivery is on hold")
    with srv.smtplib() as s:
        for i in range(3):
            s.sendmail(SENDER, ["held@example.test"], MSG)
    assert_equal(len(srv.spool_files("queue")), 3, "queue files while on hold")
    srv.stop()
    srv.start()                                   # still on hold after a restart
    srv.wait_log(r"queue: resuming 3 message\(s\)", since_start=True)
    time.sleep(0.5)
    assert_equal(srv.maildir_files("held"), [], "Maildir while on hold")
    assert_equal(len(srv.spool_files("queue")), 3, "queue files after the restart")
    rewrite(srv, BASE)
    reload_ok(srv, "0 rules")
    srv.wait_maildir("held", 3)
    srv.wait_queue_empty()


run()
