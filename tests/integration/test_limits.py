"""Limits, refusals and their enhanced status codes, over raw sockets."""

import sys
sys.dont_write_bytecode = True     # no __pycache__ in the source tree

import os
import time

from harness import (Server, assert_equal, assert_in, queue_id, read_file, run, skip, stuff, test,
                     wait_for)

HELO = "client.example.test"
SENDER = "sender@origin.test"


def deliver_one(c, rcpt, body=b"Subject: ok\r\n\r\nfine\r\n"):
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    c.send_expect("RCPT TO:<%s>" % rcpt, 250)
    c.send_expect("DATA", 354)
    c.send(stuff(body))
    return queue_id(c.expect(250, "2.0.0 Ok: queued as"))


@test("command line limit: 2048 bytes with CRLF pass, 2049 and 100 KB get 500 5.5.2")
def _():
    with Server() as srv:
        c = srv.connect()
        c.ehlo(HELO)
        exact = b"NOOP " + b"x" * (2048 - 7)
        assert_equal(len(exact) + 2, 2048, "line length")
        c.send(exact + b"\r\n")
        c.expect(250)
        c.send(b"NOOP " + b"x" * (2048 - 6) + b"\r\n")
        c.expect(500, "5.5.2")
        c.send_expect("NOOP", 250)
        # A line far longer than any buffer: sent in pieces, one reply only.
        long_line = b"MAIL FROM:<" + b"a" * 100000 + b"@origin.test>\r\n"
        for i in range(0, len(long_line), 8192):
            c.send(long_line[i:i + 8192])
        c.expect(500, "5.5.2")
        c.send_expect("NOOP", 250)
        c.send_expect("RCPT TO:<x@example.test>", 503, "5.5.1")   # no MAIL was opened
        deliver_one(c, "line@example.test")
        srv.wait_maildir("line", 1)


@test("max-command-length setting is honoured (600)")
def _():
    with Server(settings={"max-command-length": 600}) as srv:
        c = srv.connect()
        c.ehlo(HELO)
        c.send(b"NOOP " + b"y" * (600 - 7) + b"\r\n")
        c.expect(250)
        c.send(b"NOOP " + b"y" * (600 - 6) + b"\r\n")
        c.expect(500, "5.5.2")


@test("message over max-message-size: 552 5.3.4, not delivered, connection still works")
def _():
    with Server(settings={"max-message-size": 2000}) as srv:
        c = srv.connect()
        c.ehlo(HELO)
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        c.send_expect("RCPT TO:<size@example.test>", 250)
        c.send_expect("DATA", 354)
        c.send(stuff(b"Subject: big\r\n\r\n" + b"z" * 78 + b"\r\n") * 1)
        c.expect(250)      # small: accepted
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        c.send_expect("RCPT TO:<size@example.test>", 250)
        c.send_expect("DATA", 354)
        c.send(stuff(b"Subject: big\r\n\r\n" + (b"z" * 78 + b"\r\n") * 40))   # 3216 bytes
        c.expect(552, "5.3.4")
        c.send_expect("NOOP", 250)
        c.send_expect("RCPT TO:<size@example.test>", 503, "5.5.1")  # the transaction is over
        qid = deliver_one(c, "size@example.test")
        c.send_expect("QUIT", 221)
        files = srv.wait_maildir("size", 2, settle=0.3)
        assert any(qid in f for f in files)
        for f in files:
            assert len(read_file(f)) < 1000, "the oversized message was delivered"


@test("max-message-size boundary: exactly the limit is accepted, one byte more is not")
def _():
    limit = 2000
    with Server(settings={"max-message-size": limit}) as srv:
        c = srv.connect()
        c.ehlo(HELO)
        head = b"Subject: edge\r\n\r\n"
        for extra, code in ((0, 250), (1, 552)):
            filler = limit - len(head) - 2 + extra      # counted as received, CRLF included
            msg = head + b"e" * filler + b"\r\n"
            assert_equal(len(msg), limit + extra, "message length")
            c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
            c.send_expect("RCPT TO:<edge@example.test>", 250)
            c.send_expect("DATA", 354)
            c.send(msg + b".\r\n")
            c.expect(code)
        srv.wait_maildir("edge", 1, settle=0.3)


@test("SIZE= at MAIL: over the limit 552 5.3.4, at the limit 250, bad value 501")
def _():
    with Server(settings={"max-message-size": 5000}) as srv:
        c = srv.connect()
        c.ehlo(HELO)
        c.send_expect("MAIL FROM:<%s> SIZE=5001" % SENDER, 552, "5.3.4")
        c.send_expect("MAIL FROM:<%s> SIZE=99999999999999999999999" % SENDER, 501)
        c.send_expect("MAIL FROM:<%s> SIZE=abc" % SENDER, 501, "5.5.4")
        c.send_expect("MAIL FROM:<%s> SIZE=5000" % SENDER, 250, "2.1.0")
        c.send_expect("RSET", 250)
        c.send_expect("MAIL FROM:<%s> FOO=bar" % SENDER, 555, "5.5.4")


@test("max-recipients=3: the 4th RCPT gets 452 4.5.3, the message goes to the 3 accepted")
def _():
    with Server(settings={"max-recipients": 3}) as srv:
        c = srv.connect()
        c.ehlo(HELO)
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        for i in range(3):
            c.send_expect("RCPT TO:<r%d@example.test>" % i, 250, "2.1.5")
        c.send_expect("RCPT TO:<r3@example.test>", 452, "4.5.3")
        c.send_expect("RCPT TO:<r4@example.test>", 452, "4.5.3")
        c.send_expect("DATA", 354)
        c.send(stuff(b"Subject: three\r\n\r\nx\r\n"))
        qid = queue_id(c.expect(250))
        for i in range(3):
            f = srv.wait_maildir("r%d" % i, 1)[0]
            assert_in(qid, f, "file name")
        time.sleep(0.3)
        assert not os.path.exists(srv.maildir("r3")) and not os.path.exists(srv.maildir("r4"))
        assert_in("nrcpt=3", srv.log_text(), "log")


@test("relaying refused: 554 5.7.1; DATA without any valid recipient 554 5.5.1")
def _():
    with Server() as srv:
        c = srv.connect()
        c.ehlo(HELO)
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        r = c.send_expect("RCPT TO:<someone@elsewhere.test>", 554, "5.7.1")
        assert_in("someone@elsewhere.test", r.text, "reply")
        c.send_expect("RCPT TO:<someone@sub.example.test>", 554, "5.7.1")
        c.send_expect("RCPT TO:<someone@[127.0.0.1]>", 554, "5.7.1")
        c.send_expect("DATA", 554, "5.5.1")
        c.send_expect("RCPT TO:<ok@EXAMPLE.TEST>", 250)      # domains compare case-blind
        c.send_expect("DATA", 354)
        c.send(stuff(b"Subject: x\r\n\r\nx\r\n"))
        c.expect(250)
        srv.wait_maildir("ok", 1)
        assert not os.path.exists(srv.path("mail", "someone"))


@test("address syntax: 501 5.1.7 for senders, 501 5.1.3 for recipients, 501 5.5.4 for commands")
def _():
    with Server() as srv:
        c = srv.connect()
        c.ehlo(HELO)
        for bad in ["MAIL FROM:<a b@origin.test>", "MAIL FROM:sender@origin.test",
                    "MAIL FROM:<sender@>", "MAIL FROM:<sender@origin..test>",
                    "MAIL FROM:<sender@origin.test", "MAIL FROM:<@origin.test>"]:
            c.send_expect(bad, 501, "5.1.7")
        c.send_expect("MAIL TO:<sender@origin.test>", 501, "5.5.4")
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        for bad in ["RCPT TO:<bad@>", "RCPT TO:<a b@example.test>", "RCPT TO:bad@example.test",
                    "RCPT TO:<bad@exa_mple..test>", "RCPT TO:<>", "RCPT TO:<@example.test>"]:
            c.send_expect(bad, 501, "5.1.3")
        c.send_expect("RCPT FROM:<x@example.test>", 501, "5.5.4")
        c.send_expect("EHLO", 501, "5.5.4")
        c.send_expect("HELO bad/name", 501, "5.5.4")


@test("local parts that are not mailbox names are refused (550 5.1.1 / 501 5.1.3)")
def _():
    with Server() as srv:
        c = srv.connect()
        c.ehlo(HELO)
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        for bad in ['RCPT TO:<"../etc"@example.test>', 'RCPT TO:<".."@localhost>', "RCPT TO:<a/b@example.test>",
                    'RCPT TO:<"x y"@example.test>', 'RCPT TO:<"a\\/b"@example.test>']:
            c.send_expect(bad, 550, "5.1.1")
        # Not even valid syntax as a dot-atom.
        for bad in ["RCPT TO:<../etc@example.test>", "RCPT TO:<.hidden@example.test>"]:
            c.send_expect(bad, 501, "5.1.3")
        c.send_expect("DATA", 554, "5.5.1")
        # <Postmaster> without a domain must be accepted (RFC 5321 4.5.1).
        c.send_expect("RCPT TO:<Postmaster>", 250)
        c.send_expect("DATA", 354)
        c.send(stuff(b"Subject: pm\r\n\r\nx\r\n"))
        qid = queue_id(c.expect(250))
        f = srv.wait_maildir("postmaster", 1)[0]
        assert read_file(f).startswith(b"Return-Path: <sender@origin.test>\nDelivered-To: Postmaster\n"), read_file(f)[:80]
        assert_in(qid, f, "file name")
        time.sleep(0.2)
        assert sorted(os.listdir(srv.path("mail"))) == ["postmaster"], os.listdir(srv.path("mail"))
        assert not os.path.exists(srv.path("etc"))


@test("wrong command order: 503 5.5.1 for each out-of-sequence command")
def _():
    with Server() as srv:
        c = srv.connect()
        c.send_expect("MAIL FROM:<%s>" % SENDER, 503, "5.5.1")
        c.ehlo(HELO)
        c.send_expect("RCPT TO:<seq@example.test>", 503, "5.5.1")
        c.send_expect("DATA", 503, "5.5.1")
        c.send_expect("BDAT 0 LAST", 503, "5.5.1")
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        c.send_expect("MAIL FROM:<%s>" % SENDER, 503, "5.5.1")
        c.send_expect("DATA", 503, "5.5.1")
        c.send_expect("RCPT TO:<seq@example.test>", 250)
        c.send_expect("DATA", 354)
        c.send(stuff(b"Subject: seq\r\n\r\nx\r\n"))
        c.expect(250)
        c.send_expect("RCPT TO:<seq@example.test>", 503, "5.5.1")
        c.send_expect("EXPN staff", 502, "5.5.1")
        c.send_expect("VRFY seq", 252, "2.5.0")
        c.send_expect("HELP", 214)
        c.send_expect("XYZZY", 500, "5.5.2")
        c.send_expect("QUIT", 221, "2.0.0")
        srv.wait_maildir("seq", 1)


@test("max-errors=3: the third error is followed by 421 4.7.0 and the connection closes")
def _():
    with Server(settings={"max-errors": 3}) as srv:
        c = srv.connect()
        c.ehlo(HELO)
        c.send_expect("XYZZY", 500, "5.5.2")
        c.send_expect("NOOP", 250)                 # good commands do not count
        c.send_expect("RCPT TO:<x@example.test>", 503)
        c.send(b"PLUGH\r\n")
        c.expect(500, "5.5.2")
        c.expect(421, "4.7.0")
        assert c.closed_by_server(), "connection still open after 421"
        srv.wait_log(r"too many errors from \[127\.0\.0\.1\]")


@test("max-connections-per-client=2: the third gets 421 4.7.0; a slot frees on close")
def _():
    with Server(settings={"max-connections-per-client": 2}) as srv:
        a = srv.connect()
        b = srv.connect()
        third = srv.connect(greet=False)
        third.expect(421, "4.7.0")
        assert third.closed_by_server(), "refused connection left open"
        if srv.ipv6:
            # Another client address is not counted with 127.0.0.1.
            six = srv.connect(ipv6=True)
            six.send_expect("NOOP", 250)
            six.send_expect("QUIT", 221)
        a.send_expect("QUIT", 221)
        assert a.closed_by_server()
        def accepted():
            c = srv.connect(greet=False)
            r = c.reply()
            c.close()
            return r.code == 220
        wait_for(accepted, 5, what="a connection accepted again")
        b.send_expect("NOOP", 250)
        srv.wait_log(r"refused connection from \[127\.0\.0\.1\]: too many connections")


@test("max-connections=2 counts all clients: the third (other address) gets 421 4.7.0")
def _():
    with Server(settings={"max-connections": 2}) as srv:
        if not srv.ipv6:
            skip("no IPv6 loopback")
        a = srv.connect()
        b = srv.connect()
        c = srv.connect(ipv6=True, greet=False)
        c.expect(421, "4.7.0")
        a.send_expect("NOOP", 250)
        b.send_expect("NOOP", 250)


@test("command-timeout=2: an idle client gets 421 4.4.2 and is disconnected")
def _():
    with Server(settings={"command-timeout": 2}) as srv:
        c = srv.connect(timeout=8)
        c.ehlo(HELO)
        t0 = time.monotonic()
        r = c.reply()
        elapsed = time.monotonic() - t0
        c.expect(421, "4.4.2", reply=r)
        assert 1.5 <= elapsed <= 4.5, "timeout reply after %.1fs" % elapsed
        assert c.closed_by_server(), "connection still open after the timeout"
        srv.wait_log(r"timeout after 2s from \[127\.0\.0\.1\]")


@test("data-timeout=2: a client silent inside DATA gets 421 4.4.2; nothing delivered")
def _():
    with Server(settings={"data-timeout": 2, "command-timeout": 30}) as srv:
        c = srv.connect(timeout=8)
        c.ehlo(HELO)
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        c.send_expect("RCPT TO:<slow@example.test>", 250)
        c.send_expect("DATA", 354)
        c.send(b"Subject: slow\r\n\r\nhalf a message\r\n")
        t0 = time.monotonic()
        c.expect(421, "4.4.2")
        assert time.monotonic() - t0 <= 4.5
        assert c.closed_by_server()
        time.sleep(0.3)
        assert not srv.maildir_files("slow"), "a timed-out message was delivered"


@test("non-ASCII address without SMTPUTF8: 553 5.6.7 at MAIL and at RCPT")
def _():
    with Server() as srv:
        c = srv.connect()
        c.ehlo(HELO)
        c.send_expect("MAIL FROM:<andré@origin.test>", 553, "5.6.7")
        c.send_expect("MAIL FROM:<andre@orígin.test>", 553, "5.6.7")
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        c.send_expect("RCPT TO:<jösé@example.test>", 553, "5.6.7")
        c.send_expect("RSET", 250)
        c.send_expect("MAIL FROM:<%s> SMTPUTF8" % SENDER, 250)
        c.send_expect("RCPT TO:<jösé@example.test>", 250)
        c.send_expect("DATA", 354)
        c.send(stuff("Subject: ok\r\n\r\nja\r\n".encode()))
        c.expect(250)
        srv.wait_maildir("jösé", 1)
        # After HELO there are no parameters, so no SMTPUTF8 either.
        c.send_expect("HELO " + HELO, 250)
        c.send_expect("MAIL FROM:<%s> SMTPUTF8" % SENDER, 555, "5.5.4")


@test("invalid UTF-8 and NUL bytes in commands are refused")
def _():
    with Server() as srv:
        c = srv.connect()
        c.ehlo(HELO)
        c.send(b"MAIL FROM:<\xff\xfe@origin.test> SMTPUTF8\r\n")
        r = c.reply()
        assert r.code in (501, 553), r
        c.send(b"NOOP\x00\r\n")
        c.expect(500, "5.5.2")
        c.send_expect("NOOP", 250)


run()
