#!/usr/bin/env python3
"""guillemot test-session: the dry run of a conversation through the real
state machine and rules, with no network and no delivery."""

import os
import subprocess

from harness import GUILLEMOT, TOP_SRCDIR, assert_equal, make_tempdir, run, test

RULES = os.path.join(TOP_SRCDIR, "examples", "rules.scm")

CONVERSATION = """EHLO client.test
MAIL FROM:<a@example.org>
RCPT TO:<blocked@example.test>
RCPT TO:<bob@example.test>
DATA
Subject: hello

hi
.
QUIT
"""


def dry_run(conversation, *args, config=RULES):
    state = make_tempdir()
    return subprocess.run([GUILLEMOT, "test-session", "-c", config, "--set", "state-dir=" + state]
                          + list(args), input=conversation, capture_output=True, text=True,
                          timeout=30), state


@test("replies, each rule's verdict and what would be queued are printed; nothing is spooled")
def _():
    p, state = dry_run(CONVERSATION)
    assert_equal(p.returncode, 0, "exit status")
    out = p.stdout.splitlines()
    assert out[0] == "<<< 220 mx.example.test ESMTP Guillemot", out[0]
    assert ">>> RCPT TO:<blocked@example.test>" in out
    assert any(l.startswith('*** log: rule "blocked mailbox" (rcpt): reject 550 5.7.1') and l.endswith(" ms")
               for l in out), p.stdout
    assert any(l.startswith("<<< 550 5.7.1 <blocked@example.test>") for l in out), p.stdout
    assert any(l.startswith('*** log: rule "blocked mailbox" (rcpt): next') for l in out), p.stdout
    assert any(l.startswith("*** would queue ") and "to=<bob@example.test>" in l for l in out), p.stdout
    assert "*** | X-Guillemot-Policy: checked" in out, p.stdout
    assert any(l.startswith("<<< 250 2.0.0 Ok: queued as ") for l in out), p.stdout
    assert out[-1] == "*** connection closed", out[-1]
    assert not os.path.exists(os.path.join(state, "spool")), "test-session touched the spool"
    assert not os.path.exists(os.path.join(state, "mail")), "test-session delivered"


@test("--client sets the address the connect rules see (IPv6 too)")
def _():
    conf = os.path.join(make_tempdir(), "c.scm")
    with open(conf, "w") as f:
        f.write('(use-modules (guillemot))\n(local-domains "example.test")\n'
                '(rule connect "only doc net" (lambda (s) (if (address-in? (client-address s) "2001:db8::/32") (next) (reject 554 "5.7.1 not you"))))\n')
    p, _ = dry_run("QUIT\n", "--client", "[2001:db8::7]:4000", config=conf)
    assert p.stdout.splitlines()[1].startswith("<<< 220 "), p.stdout
    p, _ = dry_run("QUIT\n", "--client", "192.0.2.9", config=conf)
    assert "<<< 554 5.7.1 not you" in p.stdout.splitlines(), p.stdout


@test("a configuration error exits 1 with FILE:LINE:COLUMN, before any conversation")
def _():
    conf = os.path.join(make_tempdir(), "bad.scm")
    with open(conf, "w") as f:
        f.write('(use-modules (guillemot))\n(rule nosuch "x" (lambda (s) (next)))\n')
    p, _ = dry_run("QUIT\n", config=conf)
    assert_equal(p.returncode, 1, "exit status")
    assert p.stderr.startswith(conf + ":2:1: rule: unknown stage nosuch"), p.stderr


@test("queued and delivery rules: their verdicts and each recipient's mailbox are printed")
def _():
    conf = os.path.join(make_tempdir(), "q.scm")
    with open(conf, "w") as f:
        f.write('(use-modules (guillemot))\n(local-domains "example.test")\n'
                '(deliver-local (maildir "/srv/mail/~a"))\n'
                '(rule queued "archive" (lambda (s msg) (add-recipient! s "archive@example.test") (next)))\n'
                '(rule delivery "route" (lambda (s rcpt)\n'
                '  (cond ((string-prefix? "bob@" rcpt) (deliver-to! s rcpt (mbox "/srv/mbox/~a")) (next))\n'
                '        ((string-prefix? "archive@" rcpt) (next))\n'
                '        (else (defer 450 "4.2.1 later")))))\n')
    p, state = dry_run(CONVERSATION.replace("blocked@", "carl@"), config=conf)
    out = p.stdout.splitlines()
    for line in ("*** queued: next",
                 "*** delivery to <carl@example.test>: defer 450 4.2.1 later",
                 "*** delivery to <bob@example.test>: next, mbox /srv/mbox/bob",
                 "*** delivery to <archive@example.test>: next, maildir /srv/mail/archive"):
        assert line in out, "%r not in:\n%s" % (line, p.stdout)
    assert not os.path.exists(os.path.join(state, "spool")), "test-session touched the spool"


run()
