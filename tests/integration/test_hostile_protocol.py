"""Hostile input at the protocol level, through the whole server: smuggling
variants down to the delivered Maildir file, commands pipelined where they are
message text, STARTTLS (not offered), NUL and 8-bit bytes, invalid UTF-8,
BDAT and SIZE that lie, recipients over the limit, RSET in every state.

test_smuggling.py has the four classic smuggling probes, BDAT and PIPELINING
basics; test_limits.py the limits one at a time. Every test here ends with
hostile.still_serves(): a normal client still gets a message delivered."""

import sys
sys.dont_write_bytecode = True     # no __pycache__ in the source tree

import os
import re
import time

from harness import (Server, assert_equal, assert_in, check_delivered, queue_id, read_file,
                     received_block, run, stuff, test, wait_for)
from hostile import (HELO, SENDER, RssSampler, open_transaction, still_serves,
                     wait_disconnect_logged, memory_bound)

DATA_RULES = """\
(use-modules (guillemot))
(define-server #:hostname "mx.example.test")
(local-domains "example.test" "localhost")
(deliver-local (maildir "mail/~a/Maildir"))
(rule data "show what rules read"
  (lambda (s msg)
    (let ((probe (header-ref msg "X-Probe")))
      (unless (null? probe)
        (header-add! msg "X-Seen" (string-join probe "|"))))
    (next)))
"""


def delivered_exactly(srv, local, qid, rcpts, stored, helo=HELO, protocol="ESMTP"):
    """The file of QID in LOCAL's Maildir is the delivery of STORED (the
    message as the server stores it: LF line ends, nothing bare)."""
    files = wait_for(lambda: [f for f in srv.maildir_files(local) if qid in f], 10,
                     what="message %s in %s's Maildir" % (qid, local))
    content = read_file(files[0])
    rcpt = "%s@example.test" % local
    head = ("Return-Path: <%s>\nDelivered-To: %s\n" % (SENDER, rcpt)).encode()
    rx = re.compile(re.escape(head) + received_block(helo, "127.0.0.1", qid, rcpts, protocol)
                    + re.escape(stored) + rb"\Z", re.S)
    if not rx.match(content):
        raise AssertionError("delivered file differs\n  expected body: %r\n  file:          %r"
                             % (stored, content))
    return content


# ---- Smuggling, down to the delivered file ----------------------------------

SMUGGLED = (b"MAIL FROM:<evil@attacker.test>\r\n"
            b"RCPT TO:<victim@example.test>\r\n"
            b"DATA\r\n"
            b"From: ceo@example.test\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n")
SMUGGLED_STORED = SMUGGLED.replace(b"\r\n", b"\n")

# (name, bytes between "before" and the smuggled commands, what the server
# stores for them). A bare CR or LF is a line end; a leading dot goes only on
# a line that began after a CRLF and has more on it (RFC 5321 4.5.2).
PROBES = [
    ("LF.LF", b"\n.\n", b"\n.\n"),
    ("CR.CR", b"\r.\r", b"\n.\n"),
    ("LF.CRLF", b"\n.\r\n", b"\n.\n"),
    ("CRLF.LF", b"\r\n.\n", b"\n.\n"),
    ("CR.CRLF", b"\r.\r\n", b"\n.\n"),
    ("CRLF.CR", b"\r\n.\r", b"\n\n"),
    ("CRLF.CR CRLF", b"\r\n.\r\r\n", b"\n\n\n"),
    ("CRLF NUL.CRLF", b"\r\n\x00.\r\n", b"\n\x00.\n"),
    ("CRLF.NUL CRLF", b"\r\n.\x00\r\n", b"\n\x00\n"),
    ("CRLF SP.CRLF", b"\r\n .\r\n", b"\n .\n"),
]
BARE = {"LF.LF", "CR.CR", "LF.CRLF", "CRLF.LF", "CR.CRLF", "CRLF.CR", "CRLF.CR CRLF"}


def probe_message(probe):
    return b"Subject: probe\r\n\r\nbefore" + probe + SMUGGLED


@test("smuggling variants: each stays inside one message, stored byte for byte; no smuggled sender or recipient")
def _():
    with Server() as srv:
        for i, (name, probe, stored) in enumerate(PROBES):
            local = "probe%d" % i
            c = open_transaction(srv, ["%s@example.test" % local])
            c.send_expect("DATA", 354)
            c.send(probe_message(probe) + b".\r\n")
            qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
            c.send_expect("QUIT", 221)            # nothing else was answered in between
            try:
                delivered_exactly(srv, local, qid, ["%s@example.test" % local],
                                  b"Subject: probe\n\nbefore" + stored + SMUGGLED_STORED)
            except AssertionError as e:
                raise AssertionError("probe %s: %s" % (name, e))
        time.sleep(0.3)
        assert not os.path.exists(srv.maildir("victim")), "a smuggled message was delivered"
        log = srv.log_text()
        assert "from=<evil@attacker.test>" not in log, "the smuggled sender became an envelope"
        assert_equal(len(re.findall(r": client=\[127\.0\.0\.1\]", log)), len(PROBES),
                     "messages queued")
        still_serves(srv)


@test("smuggling variants with bare-line-endings=reject: bare ones 550 5.6.0, NUL and space ones stored")
def _():
    with Server(settings={"bare-line-endings": "reject"}) as srv:
        c = srv.connect()
        c.ehlo(HELO)
        for i, (name, probe, stored) in enumerate(PROBES):
            local = "rej%d" % i
            c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
            c.send_expect("RCPT TO:<%s@example.test>" % local, 250)
            c.send_expect("DATA", 354)
            c.send(probe_message(probe) + b".\r\n")
            r = c.reply()
            if name in BARE:
                c.expect(550, "5.6.0", reply=r)
            else:
                qid = queue_id(c.expect(250, "2.0.0 Ok: queued as", reply=r))
                delivered_exactly(srv, local, qid, ["%s@example.test" % local],
                                  b"Subject: probe\n\nbefore" + stored + SMUGGLED_STORED)
        c.send_expect("QUIT", 221)
        time.sleep(0.3)
        for i, (name, _, _) in enumerate(PROBES):
            if name in BARE:
                assert not srv.maildir_files("rej%d" % i), "refused probe %s delivered" % name
        assert not os.path.exists(srv.maildir("victim"))
        still_serves(srv)


# ---- Commands where message text belongs -------------------------------------

@test("commands pipelined behind DATA, before its 354, are message text: one message holds them")
def _():
    with Server() as srv:
        c = open_transaction(srv, ["text@example.test"])
        inner = (b"RSET\r\nMAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.test>\r\n"
                 b"DATA\r\nSubject: inner\r\n\r\ninner body\r\nQUIT\r\n")
        # One write: DATA, the "commands", the end of the message, then QUIT.
        c.send(b"DATA\r\n" + stuff(inner) + b"QUIT\r\n")
        c.expect(354)
        qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
        c.expect(221, "2.0.0")
        assert c.closed_by_server(), "connection open after QUIT"
        f = srv.wait_maildir("text", 1, settle=0.3)[0]
        check_delivered(read_file(f), SENDER, "text@example.test", HELO, "127.0.0.1", qid,
                        ["text@example.test"], inner)
        assert not os.path.exists(srv.maildir("victim")), "a pipelined DATA line ran as a command"
        # The session counted the commands it ran: none of the quoted ones.
        srv.wait_log(r"(?m)disconnect from \[127\.0\.0\.1\]:\d+ ehlo=1 mail=1 rcpt=1 data=1 quit=1 "
                     r"commands=5$")
        still_serves(srv)


@test("message text pipelined behind a refused DATA is dropped, not run: 421 4.5.0, nothing delivered")
def _():
    with Server() as srv:
        c = srv.connect()
        c.ehlo(HELO)
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        c.send_expect("RCPT TO:<someone@elsewhere.test>", 554, "5.7.1")
        # A client that does not wait for the 354 (RFC 2920 3.1): its message
        # quotes a whole transaction.
        early = (b"RCPT TO:<victim@example.test>\r\nDATA\r\n"
                 b"Subject: smuggled\r\n\r\nx\r\n.\r\nQUIT\r\n")
        c.send(b"DATA\r\n" + early)
        c.expect(554, "5.5.1")
        c.expect(421, "4.5.0")
        assert c.closed_by_server(), "connection open after 421"
        srv.wait_log(r"improper pipelining after DATA from \[127\.0\.0\.1\]:\d+: %d byte\(s\)"
                     % len(early))
        time.sleep(0.3)
        assert not os.path.exists(srv.maildir("victim")), "text after the refused DATA ran"
        # A refused DATA alone is an ordinary error: the session goes on.
        c = srv.connect()
        c.ehlo(HELO)
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        c.send_expect("DATA", 503, "5.5.1")
        c.send_expect("RCPT TO:<alone@example.test>", 250)
        c.send_expect("DATA", 354)
        c.send(stuff(b"Subject: after\r\n\r\nok\r\n"))
        c.expect(250, "2.0.0 Ok: queued as")
        srv.wait_maildir("alone", 1)
        still_serves(srv)


@test("STARTTLS is not offered: 500 5.5.2, and commands pipelined behind it run in plain text (current behaviour)")
def _():
    # No TLS exists yet, so nothing switches layers under the pipelined
    # commands: they are ordinary plain-text commands. Once STARTTLS exists,
    # input buffered behind its 220 must be dropped (CVE-2011-0411) and this
    # test must change.
    with Server() as srv:
        c = srv.connect()
        c.send_expect("STARTTLS", 500, "5.5.2")           # before EHLO too
        r = c.ehlo(HELO)
        assert not any(l.upper().startswith("STARTTLS") for l in r.lines), r
        c.send(b"STARTTLS\r\nMAIL FROM:<%s>\r\nRCPT TO:<tls@example.test>\r\n" % SENDER.encode())
        c.expect(500, "5.5.2")
        c.expect(250, "2.1.0")
        c.expect(250, "2.1.5")
        c.send_expect("DATA", 354)
        body = b"Subject: no tls\r\n\r\nplain\r\n"
        c.send(stuff(body))
        qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
        f = srv.wait_maildir("tls", 1)[0]
        check_delivered(read_file(f), SENDER, "tls@example.test", HELO, "127.0.0.1", qid,
                        ["tls@example.test"], body)
        still_serves(srv)


# ---- NUL and 8-bit bytes ---------------------------------------------------

@test("NUL bytes anywhere in a command: 500 5.5.2, and the state is unchanged")
def _():
    with Server(settings={"max-errors": 100}) as srv:
        c = srv.connect()
        bad = [b"\x00", b"\x00NOOP", b"NOOP\x00", b"EHLO client\x00.example.test",
               b"MAIL FROM:<a\x00b@origin.test>", b"RCPT TO:<x@example.test>\x00"]
        for line in bad[:4]:
            c.send(line + b"\r\n")
            c.expect(500, "5.5.2")
        c.send_expect("MAIL FROM:<%s>" % SENDER, 503, "5.5.1")    # the NUL EHLO did not count
        c.ehlo(HELO)
        c.send(bad[4] + b"\r\n")
        c.expect(500, "5.5.2")
        c.send_expect("RCPT TO:<x@example.test>", 503, "5.5.1")   # no MAIL was opened
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        c.send(bad[5] + b"\r\n")
        c.expect(500, "5.5.2")
        c.send_expect("DATA", 503, "5.5.1")                       # no recipient was added
        c.send(b"\x00" * 5000 + b"\r\n")                          # long and NUL: one reply
        c.expect(500, "5.5.2")
        c.send_expect("NOOP", 250)
        still_serves(srv)


@test("NUL bytes in message data are stored unchanged, and rules read the headers after them")
def _():
    with Server(config_text=DATA_RULES) as srv:
        c = open_transaction(srv, ["nul@example.test"])
        message = (b"Subject: a\x00b\r\nX-Nul: \x00\x00\r\nX-Probe: after the NULs\r\n\r\n"
                   b"body\x00body\r\n\x00\r\n\x00.\r\nend\r\n")
        c.send_expect("DATA", 354)
        c.send(stuff(message))
        qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
        f = srv.wait_maildir("nul", 1)[0]
        check_delivered(read_file(f), SENDER, "nul@example.test", HELO, "127.0.0.1", qid,
                        ["nul@example.test"], b"X-Seen: after the NULs\r\n" + message)
        still_serves(srv)


EIGHT_BIT = (b"Subject: caf\xe9 \xc3\xa9t\xc3\xa9\r\nX-Bytes: " + bytes(range(0x80, 0x100)) + b"\r\n\r\n"
             + bytes(range(0x80, 0x100)) + b"\r\nGr\xfc\xdfe \xff\xfe\r\n")


@test("8-bit bytes without BODY=8BITMIME are accepted and stored unchanged, after EHLO and HELO")
def _():
    # As Postfix (strict_8bitmime = no): refusing would bounce mail from the
    # many clients that send 8-bit text without declaring it.
    with Server() as srv:
        for local, helo in (("eight", "EHLO"), ("eighthelo", "HELO")):
            c = srv.connect()
            c.send_expect("%s %s" % (helo, HELO), 250)
            c.send_expect("MAIL FROM:<%s>" % SENDER, 250)          # no BODY= parameter
            c.send_expect("RCPT TO:<%s@example.test>" % local, 250)
            c.send_expect("DATA", 354)
            c.send(stuff(EIGHT_BIT))
            qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
            f = srv.wait_maildir(local, 1)[0]
            check_delivered(read_file(f), SENDER, "%s@example.test" % local, HELO, "127.0.0.1",
                            qid, ["%s@example.test" % local], EIGHT_BIT,
                            protocol="ESMTP" if helo == "EHLO" else "SMTP")
        c = srv.connect()
        c.ehlo(HELO)
        c.send_expect("MAIL FROM:<%s> BODY=7BIT" % SENDER, 250)      # declared 7-bit: the same
        c.send_expect("RCPT TO:<seven@example.test>", 250)
        c.send_expect("DATA", 354)
        c.send(stuff(EIGHT_BIT))
        qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
        f = srv.wait_maildir("seven", 1)[0]
        check_delivered(read_file(f), SENDER, "seven@example.test", HELO, "127.0.0.1", qid,
                        ["seven@example.test"], EIGHT_BIT)
        still_serves(srv)


@test("invalid UTF-8 with SMTPUTF8: addresses and HELO refused with 501, message text stored unchanged, rules read Latin-1")
def _():
    with Server(config_text=DATA_RULES) as srv:
        c = srv.connect()
        c.send(b"EHLO \xff\xfe.example.test\r\n")
        c.expect(501, "5.5.4")
        c.ehlo(HELO)
        for sender in (b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"ok\xff"):
            c.send(b"MAIL FROM:<" + sender + b"@origin.test> SMTPUTF8\r\n")
            c.expect(501, "5.1.7")
        c.send(b"MAIL FROM:<ok@orig\xe2\x82.test> SMTPUTF8\r\n")       # truncated sequence in the domain
        c.expect(501, "5.1.7")
        c.send_expect("MAIL FROM:<andré@origin.test> SMTPUTF8", 250)
        c.send(b"RCPT TO:<\xffuser@example.test>\r\n")
        c.expect(501, "5.1.3")
        c.send(b"RCPT TO:<user@ex\xe9mple.test>\r\n")
        c.expect(501, "5.1.3")
        c.send_expect("RCPT TO:<jösé@example.test>", 250)
        message = (b"Subject: \xe9t\xe9 \xc3\x28\r\nX-Probe: caf\xe9 \xff\r\n\r\n"
                   b"\xed\xa0\x80 \xc0\xaf \xf8\x88\x80\x80\x80\r\n")
        c.send_expect("DATA", 354)
        c.send(stuff(message))
        qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
        f = srv.wait_maildir("jösé", 1)[0]
        content = read_file(f)
        # The rule's header-add! writes UTF-8 (the Latin-1 reading of the
        # bytes); the message itself is untouched.
        stored = b"X-Seen: caf\xc3\xa9 \xc3\xbf\n" + message.replace(b"\r\n", b"\n")
        rcpt = "jösé@example.test"
        head = ("Return-Path: <andré@origin.test>\nDelivered-To: %s\n" % rcpt).encode()
        rx = re.compile(re.escape(head) + received_block(HELO, "127.0.0.1", qid, [rcpt], "UTF8SMTP")
                        + re.escape(stored) + rb"\Z", re.S)
        assert rx.match(content), "delivered file differs: %r" % content
        still_serves(srv)


# ---- BDAT and SIZE that lie -----------------------------------------------

@test("BDAT size larger than the data sent: what follows is chunk data; data-timeout ends it, nothing queued")
def _():
    with Server(settings={"data-timeout": 2}) as srv:
        c = open_transaction(srv, ["bdatbig@example.test"], timeout=10)
        c.send(b"BDAT 1000 LAST\r\nonly twenty bytes..\r\nQUIT\r\nNOOP\r\n")
        t0 = time.monotonic()
        r = c.reply()                              # no reply to the QUIT or NOOP: they are data
        elapsed = time.monotonic() - t0
        c.expect(421, "4.4.2", reply=r)
        assert 1.5 <= elapsed <= 5, "421 after %.1fs" % elapsed
        assert c.closed_by_server()
        wait_disconnect_logged(srv, 2)               # the readiness probe's and this one
        assert_equal(srv.spool_files("incoming"), [], "spool/incoming")
        assert_equal(srv.spool_files("queue"), [], "spool/queue")
        assert not srv.maildir_files("bdatbig"), "a partial chunk was delivered"
        still_serves(srv)


@test("BDAT size smaller than the data sent: the chunk is exactly SIZE bytes, the rest is read as commands")
def _():
    with Server() as srv:
        c = open_transaction(srv, ["bdatsmall@example.test"])
        c.send(b"BDAT 18 LAST\r\nSubject: short\r\n\r\nhello world\r\n")
        qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
        c.expect(500, "5.5.2")                     # "hello world" as a command
        f = srv.wait_maildir("bdatsmall", 1)[0]
        check_delivered(read_file(f), SENDER, "bdatsmall@example.test", HELO, "127.0.0.1", qid,
                        ["bdatsmall@example.test"], b"Subject: short\r\n\r\n")
        # The client said where the chunk ends, so bytes past it are
        # commands: a chunk cannot hide commands from the server, but a
        # client can send them right behind it, as it could send them anyway.
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        c.send_expect("RCPT TO:<bdatsmall@example.test>", 250)
        c.send(b"BDAT 7 LAST\r\nhello\r\nRSET\r\n")
        qid2 = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
        c.expect(250, "2.0.0 Ok")                  # the RSET
        files = srv.wait_maildir("bdatsmall", 2)
        f2 = [f for f in files if qid2 in f][0]
        check_delivered(read_file(f2), SENDER, "bdatsmall@example.test", HELO, "127.0.0.1", qid2,
                        ["bdatsmall@example.test"], b"hello\r\n")
        still_serves(srv)


@test("BDAT size that wraps around 2^64 with the bytes already received: skipped like any chunk over max-message-size, in bounded memory")
def _():
    with Server(settings={"max-message-size": 2000}) as srv:
        c = open_transaction(srv, ["wrap@example.test"], timeout=10)
        c.send(b"BDAT 10\r\n0123456789")
        c.expect(250, "2.0.0 10 octets received")
        rss = RssSampler(srv.proc.pid, interval=0)
        # 10 + (2^64 - 5) is 5 in 64 bits: the size check once let it through
        # and every byte of the chunk was kept.
        c.send(b"BDAT %d LAST\r\n" % (2 ** 64 - 5))
        for i in range(20):
            c.send(b"y" * (1024 * 1024))
            rss.sample()
        time.sleep(0.2)
        rss.report("20 MiB into a BDAT chunk of 2^64-5 bytes, max-message-size 2000")
        memory_bound(rss.peak - rss.start < 4 * 1024, "the chunk was kept: RSS grew %d KiB" % (rss.peak - rss.start))
        c.close()
        wait_disconnect_logged(srv, 2)
        assert not srv.maildir_files("wrap")
        assert_equal(srv.spool_files("incoming"), [], "spool/incoming")
        still_serves(srv)


@test("SIZE= that lies: declared small and sent over max-message-size 552 at the end; declared over 552 at MAIL; declared small, sent bigger within the limit, accepted")
def _():
    with Server(settings={"max-message-size": 2000}) as srv:
        c = srv.connect()
        c.ehlo(HELO)
        c.send_expect("MAIL FROM:<%s> SIZE=100" % SENDER, 250)
        c.send_expect("RCPT TO:<size@example.test>", 250)
        c.send_expect("DATA", 354)
        c.send(stuff(b"Subject: lies\r\n\r\n" + b"x" * 3000 + b"\r\n"))
        c.expect(552, "5.3.4")
        c.send_expect("RCPT TO:<size@example.test>", 503, "5.5.1")    # the transaction is over
        c.send_expect("MAIL FROM:<%s> SIZE=2001" % SENDER, 552, "5.3.4")
        c.send_expect("RCPT TO:<size@example.test>", 503, "5.5.1")    # MAIL was refused
        c.send_expect("MAIL FROM:<%s> SIZE=10" % SENDER, 250)
        c.send_expect("RCPT TO:<size@example.test>", 250)
        # BDAT with a lying SIZE: the chunk over the limit is read and refused.
        c.send(b"BDAT 2500 LAST\r\n" + b"y" * 2500)
        c.expect(552, "5.3.4")
        c.send_expect("MAIL FROM:<%s> SIZE=10" % SENDER, 250)
        c.send_expect("RCPT TO:<size@example.test>", 250)
        c.send_expect("DATA", 354)
        message = b"Subject: bigger than declared\r\n\r\n" + b"z" * 1500 + b"\r\n"
        c.send(stuff(message))
        qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
        f = srv.wait_maildir("size", 1, settle=0.3)[0]
        check_delivered(read_file(f), SENDER, "size@example.test", HELO, "127.0.0.1", qid,
                        ["size@example.test"], message)
        still_serves(srv)


# ---- Recipients over the limit, RSET everywhere ------------------------------

@test("more RCPTs than max-recipients, pipelined: 452 4.5.3 each, not counted as errors; the accepted ones get the message")
def _():
    with Server(settings={"max-recipients": 5, "max-errors": 3}) as srv:
        c = srv.connect()
        c.ehlo(HELO)
        rcpts = ["over%d@example.test" % i for i in range(50)]
        c.send(("MAIL FROM:<%s>\r\n" % SENDER).encode()
               + b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts) + b"DATA\r\n")
        c.expect(250, "2.1.0")
        for i in range(5):
            c.expect(250, "2.1.5")
        for i in range(45):
            c.expect(452, "4.5.3")
        c.expect(354)
        body = b"Subject: five of fifty\r\n\r\nx\r\n"
        c.send(stuff(body))
        qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
        for i in range(5):
            f = srv.wait_maildir("over%d" % i, 1)[0]
            check_delivered(read_file(f), SENDER, rcpts[i], HELO, "127.0.0.1", qid, rcpts[:5], body)
        time.sleep(0.3)
        assert not os.path.exists(srv.maildir("over5")), "a recipient past the limit was delivered"
        assert "too many errors" not in srv.log_text()
        # Real errors still count.
        for i in range(2):
            c.send_expect("XYZZY", 500, "5.5.2")
        c.send(b"XYZZY\r\n")
        c.expect(500, "5.5.2")
        c.expect(421, "4.7.0")
        still_serves(srv)


@test("RSET in every state: 250 2.0.0, no transaction left; inside DATA it is message text")
def _():
    with Server(settings={"max-message-size": 2000}) as srv:
        c = srv.connect()
        c.send_expect("RSET", 250, "2.0.0")                       # before EHLO
        c.send_expect("MAIL FROM:<%s>" % SENDER, 503, "5.5.1")    # still no EHLO
        c.ehlo(HELO)
        c.send_expect("RSET", 250, "2.0.0")                       # after EHLO
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)             # the EHLO is kept
        c.send_expect("RSET", 250, "2.0.0")                       # after MAIL
        c.send_expect("RCPT TO:<rset@example.test>", 503, "5.5.1")
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        c.send_expect("RCPT TO:<rset@example.test>", 250)
        c.send_expect("RSET", 250, "2.0.0")                       # after RCPT
        c.send_expect("DATA", 503, "5.5.1")
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        c.send_expect("RCPT TO:<nobody@elsewhere.test>", 554)
        c.send_expect("RSET", 250, "2.0.0")                       # after a refused RCPT
        c.send_expect("DATA", 503, "5.5.1")
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        c.send_expect("RCPT TO:<rset@example.test>", 250)
        c.send(b"BDAT 5\r\nhello")
        c.expect(250, "2.0.0")
        c.send_expect("RSET", 250, "2.0.0")                       # after a BDAT chunk
        c.send_expect("BDAT 0 LAST", 503, "5.5.1")
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        c.send_expect("RCPT TO:<rset@example.test>", 250)
        c.send(b"BDAT 3000\r\n" + b"b" * 3000)
        c.expect(552, "5.3.4")
        c.send_expect("RSET", 250, "2.0.0")                       # after a failed chunk
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)             # DATA is allowed again
        c.send_expect("RCPT TO:<rset@example.test>", 250)
        c.send_expect("DATA", 354)
        c.send(stuff(b"Subject: big\r\n\r\n" + b"d" * 3000 + b"\r\n"))
        c.expect(552, "5.3.4")
        c.send_expect("RSET", 250, "2.0.0")                       # after a refused message
        c.send_expect("RSET extra", 501, "5.5.4")
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        c.send_expect("RCPT TO:<rset@example.test>", 250)
        c.send_expect("DATA", 354)
        message = b"Subject: rset inside\r\n\r\nRSET\r\nQUIT\r\n"
        c.send(stuff(message))                                    # inside DATA: text
        qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
        c.send_expect("RSET", 250, "2.0.0")                       # after a queued message
        c.send_expect("RSET", 250, "2.0.0")                       # twice
        c.send_expect("QUIT", 221)
        files = srv.wait_maildir("rset", 1, settle=0.3)
        check_delivered(read_file(files[0]), SENDER, "rset@example.test", HELO, "127.0.0.1", qid,
                        ["rset@example.test"], message)
        srv.wait_log(r"disconnect from \[127\.0\.0\.1\]:\d+ .*rset=11 ")
        still_serves(srv)


run()
