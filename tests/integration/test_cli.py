"""The command line: --version, --help, check-config errors as FILE:LINE:COLUMN,
--set validation, serve start-up failures."""

import sys
sys.dont_write_bytecode = True     # no __pycache__ in the source tree

import os
import re
import socket

from harness import (MBOX_CONFIG, QUICKSTART, TOP_SRCDIR, Server,
                     assert_equal, assert_in, free_port, make_tempdir, run, run_guillemot, test)


def configure_version():
    with open(os.path.join(TOP_SRCDIR, "configure.ac")) as f:
        m = re.search(r"AC_INIT\(\[[^]]*\],\s*\[([^]]+)\]", f.read())
    return m.group(1) if m else None


def write(directory, name, text):
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


@test("--version prints the package version and exits 0")
def _():
    p = run_guillemot("--version")
    assert_equal(p.returncode, 0, "exit status")
    version = configure_version()
    assert re.fullmatch(r"guillemot \d+\.\d+(\.\d+)?\S*\n", p.stdout), p.stdout
    if version:
        assert_equal(p.stdout, "guillemot %s\n" % version, "--version output")


@test("--help, -h, serve --help and check-config --help exit 0 with usage on stdout")
def _():
    for args, needle in ((["--help"], "Usage: guillemot COMMAND"),
                         (["-h"], "Usage: guillemot COMMAND"),
                         (["serve", "--help"], "Usage: guillemot serve -c FILE"),
                         (["check-config", "--help"], "Usage: guillemot check-config -c FILE")):
        p = run_guillemot(*args)
        assert_equal(p.returncode, 0, "exit status of %s" % args)
        assert_in(needle, p.stdout, "stdout of %s" % args)
    p = run_guillemot("--help")
    for word in ("serve", "check-config", "--set", "--version"):
        assert_in(word, p.stdout, "--help")


@test("usage errors: no command, unknown command, unknown option, missing -c exit 2")
def _():
    for args, needle in (([], "Usage:"),
                         (["frobnicate"], 'unknown command "frobnicate"'),
                         (["serve", "--frob"], 'unknown option "--frob"'),
                         (["serve"], "-c FILE is required"),
                         (["serve", "-c"], "-c needs a value")):
        p = run_guillemot(*args)
        assert_equal(p.returncode, 2, "exit status of %s (stderr %r)" % (args, p.stderr))
        assert_in(needle, p.stderr, "stderr of %s" % args)


@test("check-config accepts the examples (exit 0)")
def _():
    for config in (QUICKSTART, MBOX_CONFIG):
        p = run_guillemot("check-config", "-c", config)
        assert_equal(p.returncode, 0, "exit status for %s (stderr %r)" % (config, p.stderr))
        assert_in("configuration is valid", p.stdout, "stdout")
    p = run_guillemot("check-config", "-c", QUICKSTART, "--set", "listen=127.0.0.1:2600,[::1]:2600",
                      "--set=max-recipients=5")
    assert_equal(p.returncode, 0, "exit status with valid --set (stderr %r)" % p.stderr)


ERRORS = [
    # (name, text, expected "LINE:COLUMN", fragment of the message)
    ("negative size", '(use-modules (guillemot))\n(define-server #:max-message-size -1)\n',
     "2:1", "max-message-size"),
    ("size below minimum", '(use-modules (guillemot))\n\n(define-server #:max-message-size 100)\n',
     "3:1", "between 1024"),
    ("unknown keyword", '(use-modules (guillemot))\n(define-server #:hostname "h"\n  #:no-such 3)\n',
     "2:1", "no-such"),
    ("wrong type", '(use-modules (guillemot))\n(define-server #:hostname 5)\n', "2:1", "hostname"),
    ("bad listen", '(use-modules (guillemot))\n(define-server #:listen \'("nonsense"))\n', "2:1",
     "nonsense"),
    ("unbound variable", '(use-modules (guillemot))\n\n  (frobnicate 1)\n', "3:3", "frobnicate"),
    ("bad template", '(use-modules (guillemot))\n(local-domains "a.test")\n'
     '(deliver-local (maildir "mail/~s/x"))\n', "3:1", "template"),
    ("bad domain", '(use-modules (guillemot))\n(local-domains "a.test" 42)\n', "2:1", "42"),
    ("bad choice", '(use-modules (guillemot))\n(define-server #:bare-line-endings \'maybe)\n', "2:1",
     "bare-line-endings"),
]


@test("check-config reports FILE:LINE:COLUMN: message and exits 1")
def _():
    d = make_tempdir()
    failures = []
    for name, text, where, fragment in ERRORS:
        path = write(d, name.replace(" ", "-") + ".scm", text)
        p = run_guillemot("check-config", "-c", path)
        first = p.stderr.splitlines()[0] if p.stderr else ""
        prefix = "%s:%s: " % (path, where)
        if p.returncode != 1:
            failures.append("%s: exit status %d, expected 1 (stderr %r)" % (name, p.returncode, p.stderr))
        elif not first.startswith(prefix):
            failures.append("%s: first line %r does not start with %r" % (name, first, prefix))
        elif fragment not in first:
            failures.append("%s: message %r does not mention %r" % (name, first, fragment))
    assert not failures, "\n".join(failures)


@test("check-config: an unclosed parenthesis is reported with FILE:LINE:COLUMN, exit 1")
def _():
    d = make_tempdir()
    path = write(d, "unclosed.scm", '(use-modules (guillemot))\n(define-server #:hostname "h"\n')
    p = run_guillemot("check-config", "-c", path)
    assert_equal(p.returncode, 1, "exit status")
    assert re.match(re.escape(path) + r":\d+:\d+: ", p.stderr), p.stderr


@test("check-config on a missing file names it and exits 1")
def _():
    d = make_tempdir()
    path = os.path.join(d, "missing.scm")
    p = run_guillemot("check-config", "-c", path)
    assert_equal(p.returncode, 1, "exit status")
    assert_in(path, p.stderr, "stderr")


@test("--set: unknown key, bad value, missing '=' are refused with a message")
def _():
    for override, needle in (("no-such-key=1", "no-such-key"),
                             ("max-recipients=0", "max-recipients"),
                             ("max-recipients=lots", "max-recipients"),
                             ("bare-line-endings=maybe", "bare-line-endings"),
                             ("listen=nonsense", "nonsense"),
                             ("command-timeout=-5", "command-timeout"),
                             ("noequals", "KEY=VALUE")):
        for command in ("check-config", "serve"):
            p = run_guillemot(command, "-c", QUICKSTART, "--set", "state-dir=/nonexistent/x",
                              "--set", "listen=127.0.0.1:1", "--set", override, timeout=10)
            assert p.returncode != 0, "%s --set %s exited 0" % (command, override)
            assert_in(needle, p.stderr, "stderr of %s --set %s" % (command, override))


@test("serve: a port already in use is a fatal error (exit 1, message names the address)")
def _():
    d = make_tempdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        p = run_guillemot("serve", "-c", QUICKSTART, "--set", "listen=127.0.0.1:%d" % port,
                          "--set", "state-dir=" + d, timeout=10)
    assert_equal(p.returncode, 1, "exit status (stderr %r)" % p.stderr)
    assert_in("127.0.0.1:%d" % port, p.stderr, "stderr")
    assert_in("Address already in use", p.stderr, "stderr")


@test("serve: a state-dir that cannot be a directory is a fatal error (exit 1)")
def _():
    d = make_tempdir()
    blocker = write(d, "not-a-dir", "x")
    p = run_guillemot("serve", "-c", QUICKSTART, "--set", "listen=127.0.0.1:%d" % free_port(),
                      "--set", "state-dir=" + blocker, timeout=10)
    assert_equal(p.returncode, 1, "exit status (stderr %r)" % p.stderr)
    assert_in("fatal", p.stderr, "stderr")
    assert_in(blocker, p.stderr, "stderr")


@test("serve: --set hostname/listen/state-dir reach the server (greeting, EHLO, files)")
def _():
    with Server(settings={"hostname": "other.example.test"}) as srv:
        c = srv.connect(greet=False)
        r = c.expect(220)
        assert_equal(r.lines[-1], "other.example.test ESMTP Guillemot", "greeting")
        r = c.ehlo()
        assert_equal(r.lines[0], "other.example.test", "EHLO first line")
        assert os.path.isdir(srv.path("spool", "queue")), "spool not under state-dir"
        assert_in("hostname=other.example.test, state-dir=%s" % srv.dir, srv.log_text(), "log")


run()
