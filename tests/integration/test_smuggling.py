"""Raw sockets: BDAT (RFC 3030), PIPELINING (RFC 2920) reply order, and SMTP
smuggling probes: only CRLF.CRLF ends a message."""

import sys
sys.dont_write_bytecode = True     # no __pycache__ in the source tree

import os
import threading
import time

from harness import (Server, assert_equal, assert_in, check_delivered, queue_id,
                     read_file, run, stuff, test)

HELO = "client.example.test"
SENDER = "sender@origin.test"


def open_transaction(srv, rcpt, ehlo=True):
    c = srv.connect()
    if ehlo:
        c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250, "2.1.0")
    c.send_expect("RCPT TO:<%s>" % rcpt, 250, "2.1.5")
    return c


# ---- BDAT ------------------------------------------------------------------

@test("BDAT in several chunks (CRLF split across chunks, dots kept), then LAST")
def _():
    with Server() as srv:
        c = open_transaction(srv, "bdat@example.test")
        chunks = [b"Subject: chunks\r\n\r\nfirst line\r",
                  b"\n.not unstuffed in BDAT\r\n",
                  b"..two dots stay two\r\nlast line\r\n"]
        total = 0
        for ch in chunks[:-1]:
            total += len(ch)
            c.send(b"BDAT %d\r\n" % len(ch) + ch)
            r = c.expect(250, "2.0.0")
            assert_in("%d octets" % total, r.lines[-1], "BDAT reply")
        c.send(b"BDAT %d LAST\r\n" % len(chunks[-1]) + chunks[-1])
        qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
        c.send_expect("QUIT", 221)
        f = srv.wait_maildir("bdat", 1)[0]
        message = b"".join(chunks)
        # BDAT data is not dot-stuffed: as_stored only turns CRLF into LF.
        check_delivered(read_file(f), SENDER, "bdat@example.test", HELO, "127.0.0.1", qid,
                        ["bdat@example.test"], message)
        assert_in(b"\n.not unstuffed in BDAT\n..two dots stay two\n", read_file(f), "message")


@test("BDAT chunks then BDAT 0 LAST; a whole BDAT transaction in one write")
def _():
    with Server() as srv:
        c = open_transaction(srv, "zero@example.test")
        body = b"Subject: zero last\r\n\r\nbody\r\n"
        c.send(b"BDAT %d\r\n" % len(body) + body)
        c.expect(250, "2.0.0")
        c.send(b"BDAT 0 LAST\r\n")
        qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
        f = srv.wait_maildir("zero", 1)[0]
        check_delivered(read_file(f), SENDER, "zero@example.test", HELO, "127.0.0.1", qid,
                        ["zero@example.test"], body)
        # Everything pipelined at once, including the chunk and the next command.
        body2 = b"Subject: one write\r\n\r\nQUIT\r\nMAIL FROM:<x@y.test>\r\n"
        c.send(b"MAIL FROM:<%s>\r\nRCPT TO:<zero@example.test>\r\nBDAT %d LAST\r\n"
               % (SENDER.encode(), len(body2)) + body2 + b"NOOP\r\n")
        c.expect(250, "2.1.0")
        c.expect(250, "2.1.5")
        qid2 = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
        c.expect(250, "2.0.0 Ok")              # the NOOP, read as a command again
        c.send_expect("QUIT", 221)
        files = srv.wait_maildir("zero", 2)
        f2 = [f for f in files if qid2 in f][0]
        check_delivered(read_file(f2), SENDER, "zero@example.test", HELO, "127.0.0.1", qid2,
                        ["zero@example.test"], body2)


@test("DATA after BDAT is 503 5.5.1; RSET recovers")
def _():
    with Server() as srv:
        c = open_transaction(srv, "mix@example.test")
        c.send(b"BDAT 6\r\nhello\n")
        c.expect(250, "2.0.0")
        c.send_expect("DATA", 503, "5.5.1")
        c.send_expect("RSET", 250, "2.0.0")
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        c.send_expect("RCPT TO:<mix@example.test>", 250)
        c.send_expect("DATA", 354)
        c.send(stuff(b"Subject: after rset\r\n\r\nclean\r\n"))
        qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
        c.send_expect("QUIT", 221)
        files = srv.wait_maildir("mix", 1, settle=0.3)
        assert_in(qid, files[0], "file name")
        assert b"hello" not in read_file(files[0]), "data of the reset BDAT transaction leaked"


@test("DATA after a refused (552) BDAT chunk is still 503 5.5.1, nothing queued")
def _():
    # RFC 3030 2: a transaction that used BDAT cannot switch to DATA, and a
    # transaction whose chunk was refused must not be completed by DATA.
    with Server(settings={"max-message-size": 2000}) as srv:
        c = open_transaction(srv, "mixfail@example.test")
        c.send(b"BDAT 3000\r\n" + b"x" * 3000)
        c.expect(552, "5.3.4")
        r = c.cmd("DATA")
        if r.code == 354:
            c.send(b"Subject: completed by DATA\r\n\r\nx\r\n.\r\n")
            c.reply()
        c.expect(503, "5.5.1", reply=r)
        c.send_expect("RSET", 250)
        time.sleep(0.3)
        assert not srv.maildir_files("mixfail"), "a message was queued after the BDAT failure"


@test("BDAT errors consume the chunk: no MAIL (503), over max-message-size (552)")
def _():
    with Server(settings={"max-message-size": 2000}) as srv:
        c = srv.connect()
        c.ehlo(HELO)
        junk = b"MAIL FROM:<evil@attacker.test>\r\n"
        c.send(b"BDAT %d LAST\r\n" % len(junk) + junk)
        c.expect(503, "5.5.1")
        c.send_expect("NOOP", 250)              # the chunk was not read as a command
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        c.send_expect("RCPT TO:<big@example.test>", 250)
        big = b"x" * 1500 + b"\r\n"
        c.send(b"BDAT %d\r\n" % len(big) + big)
        c.expect(250, "2.0.0")
        c.send(b"BDAT %d LAST\r\n" % len(big) + big)
        c.expect(552, "5.3.4")
        c.send_expect("NOOP", 250)
        # The connection still works.
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        c.send_expect("RCPT TO:<big@example.test>", 250)
        c.send(b"BDAT 10 LAST\r\nsmall one\n")
        qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
        files = srv.wait_maildir("big", 1, settle=0.3)
        assert_in(qid, files[0], "file name")


# ---- PIPELINING ------------------------------------------------------------

@test("a whole pipelined session in one write: replies in order, two messages")
def _():
    with Server() as srv:
        c = srv.connect()
        m1 = b"Subject: p1\r\n\r\none\r\n"
        m2 = b"Subject: p2\r\n\r\n.two\r\n"
        c.send(b"EHLO " + HELO.encode() + b"\r\n"
               b"MAIL FROM:<sender@origin.test>\r\n"
               b"RCPT TO:<pipe@example.test>\r\n"
               b"RCPT TO:<someone@elsewhere.test>\r\n"
               b"RCPT TO:<pipe2@example.test>\r\n"
               b"DATA\r\n" + stuff(m1) +
               b"MAIL FROM:<sender@origin.test>\r\n"
               b"RCPT TO:<pipe@example.test>\r\n"
               b"DATA\r\n" + stuff(m2) +
               b"NOOP\r\nQUIT\r\n")
        r = c.expect(250)
        assert "PIPELINING" in r.lines, r
        c.expect(250, "2.1.0")
        c.expect(250, "2.1.5")
        c.expect(554, "5.7.1")
        c.expect(250, "2.1.5")
        c.expect(354)
        id1 = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
        c.expect(250, "2.1.0")
        c.expect(250, "2.1.5")
        c.expect(354)
        id2 = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
        c.expect(250, "2.0.0")
        c.expect(221, "2.0.0")
        assert c.closed_by_server(), "connection not closed after QUIT"
        assert id1 != id2
        f = srv.wait_maildir("pipe2", 1)[0]
        check_delivered(read_file(f), SENDER, "pipe2@example.test", HELO, "127.0.0.1", id1,
                        ["pipe@example.test", "pipe2@example.test"], m1)
        files = srv.wait_maildir("pipe", 2)
        f2 = [f for f in files if id2 in f][0]
        check_delivered(read_file(f2), SENDER, "pipe@example.test", HELO, "127.0.0.1", id2,
                        ["pipe@example.test"], m2)


@test("pipelined commands split at odd byte boundaries still answer in order")
def _():
    with Server() as srv:
        c = srv.connect()
        stream = (b"EHLO " + HELO.encode() + b"\r\nNOOP\r\nMAIL FROM:<sender@origin.test>\r\n"
                  b"RCPT TO:<split@example.test>\r\nDATA\r\n" + stuff(b"Subject: s\r\n\r\nx\r\n")
                  + b"RSET\r\nQUIT\r\n")
        for i in range(0, len(stream), 7):
            c.send(stream[i:i + 7])
            time.sleep(0.002)
        codes = []
        while True:
            r = c.reply()
            codes.append(r.code)
            if r.code == 221:
                break
        assert_equal(codes, [250, 250, 250, 250, 354, 250, 250, 221], "reply codes")
        srv.wait_maildir("split", 1)


@test("30000 pipelined NOOPs sent without reading: every reply comes back, in order")
def _():
    with Server() as srv:
        c = srv.connect(timeout=10)
        c.ehlo(HELO)
        n = 30000
        errors = []
        def writer():
            try:
                c.sock.sendall(b"NOOP\r\n" * n + b"QUIT\r\n")
            except Exception as e:          # reported below
                errors.append(e)
        t = threading.Thread(target=writer, daemon=True)
        t.start()
        count = 0
        while True:
            r = c.reply()
            if r.code == 221:
                break
            c.expect(250, "2.0.0 Ok", reply=r)
            count += 1
        t.join(10)
        assert not errors, errors
        assert_equal(count, n, "NOOP replies before the 221")


@test("DATA: a 100 KB line, a dot-stuffed long line and reads split anywhere are stored intact")
def _():
    with Server() as srv:
        c = open_transaction(srv, "long@example.test")
        c.send_expect("DATA", 354)
        message = (b"Subject: long lines\r\n\r\n" + b"L" * 100000 + b"\r\n." + b"D" * 20000
                   + b"\r\n" + b"short\r\n" * 100 + b"end\r\n")
        wire = stuff(message)
        for i in range(0, len(wire), 1021):          # an odd size: CRLFs fall across reads
            c.send(wire[i:i + 1021])
        qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
        f = srv.wait_maildir("long", 1)[0]
        check_delivered(read_file(f), SENDER, "long@example.test", HELO, "127.0.0.1", qid,
                        ["long@example.test"], message)


# ---- Smuggling -------------------------------------------------------------

PROBES = [("LF.LF", b"\n.\n"), ("CR.CR", b"\r.\r"), ("LF.CRLF", b"\n.\r\n"),
          ("CRLF.LF", b"\r\n.\n")]
SMUGGLED = (b"MAIL FROM:<evil@attacker.test>\r\n"
            b"RCPT TO:<victim@example.test>\r\n"
            b"DATA\r\n"
            b"From: ceo@example.test\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n")


def probe_payload(probe):
    return b"Subject: probe\r\n\r\nbefore" + probe + SMUGGLED + b".\r\n"


def send_probe(srv, local, probe):
    """One transaction carrying PROBE; returns (client, reply to the final dot)."""
    c = open_transaction(srv, "%s@example.test" % local)
    c.send_expect("DATA", 354)
    c.send(probe_payload(probe))
    return c, c.reply()


@test("smuggling probes (normalise): one message each, smuggled commands stay text")
def _():
    with Server() as srv:
        for i, (name, probe) in enumerate(PROBES):
            c, r = send_probe(srv, "probe%d" % i, probe)
            c.expect(250, "2.0.0 Ok: queued as", reply=r)
            # Nothing else was answered: the next reply is the QUIT's.
            c.send_expect("QUIT", 221)
            content = read_file(srv.wait_maildir("probe%d" % i, 1, settle=0.2)[0])
            for needle in (b"\nMAIL FROM:<evil@attacker.test>\nRCPT TO:<victim@example.test>\n"
                           b"DATA\nFrom: ceo@example.test\nSubject: smuggled\n\nsmuggled body\n",
                           b"Subject: probe\n\nbefore\n"):
                if needle not in content:
                    raise AssertionError("probe %s: %r not in %r" % (name, needle, content))
            assert b"\r" not in content, "probe %s: bare CR stored: %r" % (name, content)
        assert not os.path.exists(srv.maildir("victim")), "a smuggled message was delivered"
        assert "from=<evil@attacker.test>" not in srv.log_text(), \
            "the smuggled sender reached the log as an envelope sender"


@test("smuggling probes (normalise): the lone dot line is kept as text")
def _():
    # Each probe's "." line is not an end of data; RFC 5321 4.5.2 removes a
    # leading dot only when other characters follow it, so "." stays ".".
    with Server() as srv:
        failures = []
        for i, (name, probe) in enumerate(PROBES):
            c, r = send_probe(srv, "dot%d" % i, probe)
            c.expect(250, "2.0.0 Ok: queued as", reply=r)
            c.send_expect("QUIT", 221)
            content = read_file(srv.wait_maildir("dot%d" % i, 1)[0])
            body = content.split(b"\n\n", 1)[1]
            expected = (b"before\n.\nMAIL FROM:<evil@attacker.test>\nRCPT TO:<victim@example.test>\n"
                        b"DATA\nFrom: ceo@example.test\nSubject: smuggled\n\nsmuggled body\n")
            if body != expected:
                failures.append("probe %s (%r): stored body %r, expected %r"
                                % (name, probe, body, expected))
        assert not failures, "\n".join(failures)


@test("smuggling probes with bare-line-endings=reject: 550 5.6.0, nothing delivered, session goes on")
def _():
    with Server(settings={"bare-line-endings": "reject"}) as srv:
        for i, (name, probe) in enumerate(PROBES):
            c, r = send_probe(srv, "rej%d" % i, probe)
            c.expect(550, "5.6.0", reply=r)
            c.send_expect("NOOP", 250)
            # A clean message on the same connection is accepted.
            c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
            c.send_expect("RCPT TO:<clean%d@example.test>" % i, 250)
            c.send_expect("DATA", 354)
            c.send(stuff(b"Subject: clean\r\n\r\nclean\r\n"))
            c.expect(250, "2.0.0 Ok: queued as")
            c.send_expect("QUIT", 221)
            srv.wait_maildir("clean%d" % i, 1)
        time.sleep(0.3)
        for i in range(len(PROBES)):
            assert not srv.maildir_files("rej%d" % i), "rejected probe %d was delivered" % i
        assert not os.path.exists(srv.maildir("victim")), "a smuggled message was delivered"


@test("bare LF ends a command under normalise, is refused (500 5.5.2) under reject")
def _():
    with Server() as srv:
        c = srv.connect()
        c.send(b"EHLO " + HELO.encode() + b"\n")
        c.expect(250)
        c.send(b"NOOP\n")
        c.expect(250, "2.0.0")
        c.send(b"NOOP\rMAIL FROM:<evil@attacker.test>\r\n")
        c.expect(500, "5.5.2")
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)   # no transaction was opened by the CR line
    with Server(settings={"bare-line-endings": "reject"}) as srv:
        c = srv.connect()
        c.send(b"EHLO " + HELO.encode() + b"\n")
        c.expect(500, "5.5.2")
        c.ehlo(HELO)


run()
