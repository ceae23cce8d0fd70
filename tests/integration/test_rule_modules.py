"""Rule modules, (guillemot rules NAME), end to end: each test writes a
configuration that calls a module's procedure, runs the real server on
loopback ports and drives it over raw sockets; then examples/policy.scm, the
policy built from them, with its required behaviours (a blocked mailbox, the
X-Guillemot-Policy tag, no .exe attachments).

The modules are found through GUILE_LOAD_PATH like (guillemot) itself."""

import sys
sys.dont_write_bytecode = True     # no __pycache__ in the source tree

import os
import re
import socket
import time

from harness import (add_cleanup, assert_equal, assert_in, check_delivered, cmd_line, EXAMPLES,
                     expect_line, HOSTNAME, make_tempdir, queue_id, read_file, run, run_guillemot,
                     send_transaction, Server, ServerError, skip, start_unprobed, stuff, test,
                     wait_for)

HELO = "client.example.test"
SENDER = "sender@origin.test"
POLICY = os.path.join(EXAMPLES, "policy.scm")

BASE = """\
(use-modules (guillemot)
             (guillemot rules anti-relay) (guillemot rules dnsbl) (guillemot rules greylist)
             (guillemot rules limits) (guillemot rules headers))
(define-server #:hostname "mx.example.test")
(local-domains "example.test" "localhost")
(deliver-local (maildir "mail/~a/Maildir"))
"""

MSG = (b"From: sender@origin.test\r\n"
       b"Date: Mon, 02 Nov 2026 10:00:00 +0000\r\n"
       b"Subject: rule modules\r\n"
       b"\r\n"
       b"Hello.\r\n")


# ---------------------------------------------------------------------------
# Helpers

def module_server(text, start=True, **kw):
    """A Server whose configuration is BASE followed by TEXT (Scheme)."""
    srv = Server(config_text=BASE + text, **kw)
    if start:
        srv.start()
    return srv


def transaction(c, rcpts, body=MSG, sender=SENDER):
    """MAIL, RCPTs (all expected 250), DATA: returns the queue id."""
    return send_transaction(c, rcpts, body, sender)


def data_reply(c, rcpt, body, sender=SENDER):
    """MAIL, one RCPT (expected 250), DATA: returns the reply to the message."""
    c.send_expect("MAIL FROM:<%s>" % sender, 250)
    c.send_expect("RCPT TO:<%s>" % rcpt, 250)
    c.send_expect("DATA", 354)
    c.send(stuff(body))
    return c.reply()


def delivered_one(srv, local, qid):
    files = srv.wait_maildir(local, 1)
    assert qid in os.path.basename(files[0]), (qid, files)
    return read_file(files[0])


def check_config(text):
    """check-config on TEXT written to a file: (status, stdout + stderr, path)."""
    d = make_tempdir()
    path = os.path.join(d, "guillemot.scm")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    p = run_guillemot("check-config", "-c", path)
    return p.returncode, p.stdout + p.stderr, path


def mime_available():
    """None when (guillemot mime) loads in a configuration, else why not."""
    status, output, _ = check_config("(use-modules (guillemot) (guillemot mime))\n")
    return None if status == 0 else output.strip()


# ---------------------------------------------------------------------------
# anti-relay

@test("anti-relay: local domains pass, other domains from an untrusted client get 554 5.7.1 Relay access denied")
def _():
    srv = module_server("""
(anti-relay #:local-domains '("example.test" ".example.test") #:trusted-networks '())
""")
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    cmd_line(c, "RCPT TO:<x@elsewhere.test>", "554 5.7.1 Relay access denied")
    cmd_line(c, "RCPT TO:<x@EXAMPLE.test>", "250 2.1.5 Ok")
    cmd_line(c, "RCPT TO:<postmaster>", "250 2.1.5 Ok")
    c.send_expect("DATA", 354)
    c.send(stuff(MSG))
    qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
    srv.wait_maildir("x", 1)
    srv.wait_log(r"%s: to=<x@EXAMPLE.test>.*status=sent" % qid)


@test("anti-relay: a trusted network or #:authenticated? lets any domain through to the server's routing")
def _():
    srv = module_server("""
(anti-relay #:local-domains '("example.test")
            #:trusted-networks '("::1")
            #:authenticated? (lambda (s) (equal? (helo-name s) "authenticated.example")))
""")
    c = srv.connect()                   # 127.0.0.1: not trusted
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    cmd_line(c, "RCPT TO:<x@elsewhere.test>", "554 5.7.1 Relay access denied")
    # Authenticated: the rule says (next); the server's routing (no relay
    # transport) answers with its own text, which names the recipient.
    c.ehlo("authenticated.example")
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    cmd_line(c, "RCPT TO:<x@elsewhere.test>", "554 5.7.1 <x@elsewhere.test>: Relay access denied")
    if srv.ipv6:
        c6 = srv.connect(ipv6=True)     # ::1: trusted
        c6.ehlo(HELO)
        c6.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        cmd_line(c6, "RCPT TO:<x@elsewhere.test>",
                 "554 5.7.1 <x@elsewhere.test>: Relay access denied")


# ---------------------------------------------------------------------------
# greylist

@test("greylist: first attempt 451 4.7.1, a retry within #:delay too, after #:delay 1 s it passes and is delivered", timeout=40)
def _():
    srv = module_server("(greylist #:delay 1)\n")
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    cmd_line(c, "RCPT TO:<grey@example.test>", "451 4.7.1 Greylisted, try again later")
    cmd_line(c, "RCPT TO:<grey@example.test>", "451 4.7.1 Greylisted, try again later")
    srv.wait_log(r"greylist: new client=\[127\.0\.0\.1\], from=<%s>, to=<grey@example\.test>"
                 % re.escape(SENDER))
    c.send_expect("QUIT", 221)
    time.sleep(1.3)
    # The retry, from a new connection as a real server would.
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    cmd_line(c, "RCPT TO:<grey@example.test>", "250 2.1.5 Ok")
    # Another recipient, or another sender, is another triplet.
    cmd_line(c, "RCPT TO:<other@example.test>", "451 4.7.1 Greylisted, try again later")
    c.send_expect("DATA", 354)
    c.send(stuff(MSG))
    qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
    check_delivered(delivered_one(srv, "grey", qid), SENDER, "grey@example.test", HELO,
                    "127.0.0.1", qid, ["grey@example.test"], MSG)
    srv.wait_log(r"greylist: passed client=\[127\.0\.0\.1\], from=<%s>, to=<grey@example\.test>"
                 % re.escape(SENDER))
    c.send_expect("MAIL FROM:<someone.else@origin.test>", 250)
    cmd_line(c, "RCPT TO:<grey@example.test>", "451 4.7.1 Greylisted, try again later")
    # A triplet that passed passes at once from then on.
    c.send_expect("RSET", 250)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    cmd_line(c, "RCPT TO:<grey@example.test>", "250 2.1.5 Ok")


@test("greylist: #:exempt-networks covering loopback is never greylisted")
def _():
    srv = module_server("(greylist #:exempt-networks '(\"127.0.0.0/8\" \"::1\"))\n")
    c = srv.connect()
    c.ehlo(HELO)
    qid = transaction(c, ["white@example.test"])
    delivered_one(srv, "white", qid)
    assert "greylist:" not in srv.log_text(), srv.log_text()


# ---------------------------------------------------------------------------
# limits

@test("limits: the connection over #:max-connections-per-window gets 450 4.7.1 and is closed; a new window lets it in")
def _():
    srv = start_unprobed(module_server(
        "(limits #:window 3 #:max-connections-per-window 2 #:max-messages-per-window #f)\n",
        start=False))
    started = time.monotonic()
    c1 = srv.connect()                  # each reads its 220
    c2 = srv.connect()
    c3 = srv.connect(greet=False)
    expect_line(c3, "450 4.7.1 Too many connections from [127.0.0.1], try again later")
    assert c3.closed_by_server(), "the connection stayed open after the deferral"
    c1.ehlo(HELO)                       # the first two are not disturbed
    qid = transaction(c1, ["lim@example.test"])
    delivered_one(srv, "lim", qid)
    if srv.ipv6:
        c6 = srv.connect(ipv6=True)     # another address, its own count
        c6.ehlo(HELO)
    time.sleep(max(0.0, 3.2 - (time.monotonic() - started)))
    c4 = srv.connect()                  # a new window
    c4.ehlo(HELO)


@test("limits: once #:max-messages-per-window messages are in, MAIL gets 450 4.7.1, in any connection")
def _():
    srv = module_server("(limits #:max-messages-per-window 2)\n")
    c = srv.connect()
    c.ehlo(HELO)
    transaction(c, ["m1@example.test"])
    transaction(c, ["m2@example.test"])
    cmd_line(c, "MAIL FROM:<%s>" % SENDER,
             "450 4.7.1 Too many messages from [127.0.0.1], try again later")
    c2 = srv.connect()
    c2.ehlo(HELO)
    cmd_line(c2, "MAIL FROM:<%s>" % SENDER,
             "450 4.7.1 Too many messages from [127.0.0.1], try again later")
    srv.wait_maildir("m1", 1)
    srv.wait_maildir("m2", 1)


# ---------------------------------------------------------------------------
# headers

@test("headers: a message without Date gets 550 5.6.0 naming it and is not delivered; with it, delivered")
def _():
    srv = module_server("(headers)\n")
    c = srv.connect()
    c.ehlo(HELO)
    no_date = b"From: sender@origin.test\r\nSubject: no date\r\n\r\nHello.\r\n"
    r = data_reply(c, "h@example.test", no_date)
    assert_equal(r.last, "550 5.6.0 Message lacks the required header field Date", "reply")
    qid = transaction(c, ["h@example.test"])
    content = delivered_one(srv, "h", qid)
    check_delivered(content, SENDER, "h@example.test", HELO, "127.0.0.1", qid,
                    ["h@example.test"], MSG)


@test("headers: a header section over #:max-header-size gets 552 5.3.4 with its size")
def _():
    srv = module_server("(headers #:required '(\"From\") #:max-header-size 200)\n")
    c = srv.connect()
    c.ehlo(HELO)
    head = b"From: sender@origin.test\r\nX-Pad: " + b"x" * 200 + b"\r\n"
    r = data_reply(c, "big@example.test", head + b"\r\nBody\r\n")
    assert_equal(r.last, "552 5.3.4 Message header section too big (%d bytes, at most 200)"
                 % len(head), "reply")
    small = b"From: sender@origin.test\r\n\r\nBody\r\n"
    qid = transaction(c, ["big@example.test"], small)
    delivered_one(srv, "big", qid)


# ---------------------------------------------------------------------------
# dnsbl (needs the server's DNS, src/dns.c)

DNSBL = """
(define-server #:dns-local-zones '("bl.example.test")
               #:dns-local-data '("1.0.0.127.bl.example.test. 300 IN A 127.0.0.2"))
(dnsbl #:zones '("bl.example.test"))
"""


@test("dnsbl: a listed client gets 554 5.7.1 naming the zone at connect; an unlisted one is greeted")
def _():
    status, output, _ = check_config(BASE + DNSBL)
    assert_equal(status, 0, "check-config status (output %r)" % output)
    srv = start_unprobed(module_server(DNSBL, start=False))
    c = srv.connect(greet=False)
    r = c.reply()
    log = srv.log_text()
    if r.code == 451 and ("does not know" in log or "(guillemot dns) is not available" in log):
        skip("this server has no DNS lookups yet (src/dns.c): %s"
             % [l for l in log.splitlines() if "policy error" in l][:1])
    assert_equal(r.last, "554 5.7.1 Service unavailable; client [127.0.0.1] blocked using "
                 "bl.example.test", "reply")
    srv.wait_log(r"dnsbl: client=\[127\.0\.0\.1\] listed in bl\.example\.test: 127\.0\.0\.2")
    if srv.ipv6:
        c6 = srv.connect(ipv6=True, greet=False)
        expect_line(c6, "220 %s ESMTP Guillemot" % HOSTNAME)


@test("dnsbl: a zone that does not answer is logged; it lets the client in, or with #:on-failure 'defer gets 451 4.4.3")
def _():
    # A name server that never answers: a UDP socket nobody reads.
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    add_cleanup(sink.close)
    srv = start_unprobed(module_server("""
(define-server #:dns-resolver "forward" #:dns-forwarders '("127.0.0.1@%d") #:dns-timeout 1)
(dnsbl #:zones '("open.example.net"))
(dnsbl #:zones '("strict.example.net") #:on-failure 'defer)
""" % sink.getsockname()[1], start=False))
    c = srv.connect(greet=False)
    r = c.reply()
    log = srv.log_text()
    if r.code == 451 and ("does not know" in log or "(guillemot dns) is not available" in log):
        skip("this server has no DNS lookups yet (src/dns.c)")
    assert_equal(r.last, "451 4.4.3 Service temporarily unavailable; strict.example.net could "
                 "not be checked, try again later", "reply")
    srv.wait_log(r"dnsbl: lookup of 1\.0\.0\.127\.open\.example\.net failed: timeout")
    srv.wait_log(r"dnsbl: lookup of 1\.0\.0\.127\.strict\.example\.net failed: timeout")


# ---------------------------------------------------------------------------
# Argument errors

@test("check-config: a bad keyword argument to a module's procedure exits 1 with FILE:LINE:COLUMN and the message")
def _():
    cases = [
        ("(greylist #:dely 300)",
         "greylist: unknown keyword #:dely (known: #:delay, #:expire, #:remember, "
         "#:exempt-networks, #:ipv4-prefix, #:ipv6-prefix, #:clock, #:store)"),
        ("(greylist #:delay -5)", "greylist: #:delay expects a number of seconds, 0 or more, got -5"),
        ("(dnsbl #:zones '())",
         "dnsbl: #:zones expects a non-empty list of DNS zones such as (\"zen.spamhaus.org\"), got ()"),
        ("(anti-relay #:trusted-networks '(\"10.0.0.1/8\"))",
         "anti-relay: #:trusted-networks: invalid network \"10.0.0.1/8\": bits after the first 8 "
         "are set (did you mean \"10.0.0.0/8\"?)"),
        ("(limits #:window \"1m\")", "limits: #:window expects a number of seconds, more than 0, got \"1m\""),
        ("(headers #:required \"Date\")",
         "headers: #:required expects a list of header field names such as (\"From\" \"Date\"), got \"Date\""),
    ]
    line = BASE.count("\n") + 2
    for call, message in cases:
        status, output, path = check_config(BASE + "\n  " + call + "\n")
        assert_equal(status, 1, "status for %s (output %r)" % (call, output))
        assert_in("%s:%d:3: %s" % (path, line, message), output, "output for %s" % call)


# ---------------------------------------------------------------------------
# examples/policy.scm

def policy_message(extra=b""):
    return (b"From: sender@origin.test\r\n"
            b"To: someone@example.test\r\n"
            b"Date: Mon, 02 Nov 2026 10:00:00 +0000\r\n"
            b"Subject: policy.scm\r\n" + extra +
            b"\r\n"
            b"Hello.\r\n")


@test("examples/policy.scm: check-config accepts it")
def _():
    p = run_guillemot("check-config", "-c", POLICY)
    assert_equal(p.returncode, 0, "exit status (stderr %r)" % p.stderr)
    assert_in("configuration is valid", p.stdout, "stdout")


@test("examples/policy.scm: RCPT to blocked@example.test is refused with 550; others are accepted at once (own hosts are not greylisted)")
def _():
    srv = Server(config=POLICY)
    srv.start()
    for ipv6 in ([False, True] if srv.ipv6 else [False]):
        c = srv.connect(ipv6=ipv6)
        c.ehlo(HELO)
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        cmd_line(c, "RCPT TO:<blocked@example.test>",
                 "550 5.7.1 <blocked@example.test>: This mailbox does not take mail")
        cmd_line(c, "RCPT TO:<Blocked@Example.TEST>",
                 "550 5.7.1 <blocked@example.test>: This mailbox does not take mail")
        cmd_line(c, "RCPT TO:<open@example.test>", "250 2.1.5 Ok")
        c.send_expect("QUIT", 221)
    assert "greylist:" not in srv.log_text(), srv.log_text()


@test("examples/policy.scm: every accepted message gets X-Guillemot-Policy: checked, a forged one is removed")
def _():
    srv = Server(config=POLICY)
    srv.start()
    c = srv.connect()
    c.ehlo(HELO)
    message = policy_message(b"X-Guillemot-Policy: forged\r\n")
    qid = transaction(c, ["tagged@example.test"], message)
    content = delivered_one(srv, "tagged", qid)
    check_delivered(content, SENDER, "tagged@example.test", HELO, "127.0.0.1", qid,
                    ["tagged@example.test"], b"X-Guillemot-Policy: checked\r\n" + policy_message())
    # The other rules apply to our own hosts too: a message without Date.
    r = data_reply(c, "tagged@example.test", b"From: sender@origin.test\r\n\r\nNo date.\r\n")
    assert_equal(r.last, "550 5.6.0 Message lacks the required header field Date", "reply")


EXE_MESSAGE = (b"From: sender@origin.test\r\n"
               b"To: someone@example.test\r\n"
               b"Date: Mon, 02 Nov 2026 10:00:00 +0000\r\n"
               b"Subject: have a look\r\n"
               b"MIME-Version: 1.0\r\n"
               b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n"
               b"\r\n"
               b"--b1\r\n"
               b"Content-Type: text/plain\r\n"
               b"\r\n"
               b"See the attachment.\r\n"
               b"--b1\r\n"
               b"Content-Type: application/octet-stream; name=\"%s\"\r\n"
               b"Content-Disposition: attachment; filename=\"%s\"\r\n"
               b"Content-Transfer-Encoding: base64\r\n"
               b"\r\n"
               b"TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n"
               b"--b1--\r\n")


@test("examples/policy.scm: a message with an attachment named *.exe is refused with 554 5.7.1")
def _():
    why = mime_available()
    if why is not None:
        skip("(guillemot mime) is not available yet, so policy.scm leaves its .exe rule out: %s"
             % why.splitlines()[-1])
    srv = Server(config=POLICY)
    srv.start()
    c = srv.connect()
    c.ehlo(HELO)
    r = data_reply(c, "exe@example.test", EXE_MESSAGE % (b"setup.exe", b"Setup.EXE"))
    assert_equal(r.last, "554 5.7.1 Executable attachments are not accepted here", "reply")
    srv.wait_log(r'executable attachment refused: filename="Setup\.EXE"')
    qid = transaction(c, ["exe@example.test"], EXE_MESSAGE % (b"notes.txt", b"notes.txt"))
    delivered_one(srv, "exe", qid)


run()
