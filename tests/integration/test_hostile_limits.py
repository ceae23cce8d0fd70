"""Hostile line and header sizes: endless command and data lines, header lines
and header sections over max-header-size. Memory is read from /proc and
printed as "# ... RSS" lines (tests/logs/integration_test_hostile_limits.log).

test_limits.py checks the command-length and message-size limits at their
boundaries; here the inputs are far past them. Every test ends with
hostile.still_serves()."""

import sys
sys.dont_write_bytecode = True     # no __pycache__ in the source tree

import time

from harness import (Server, assert_equal, check_delivered, queue_id, read_file, run, stuff, test)
from hostile import (HELO, SENDER, RssSampler, open_transaction, still_serves, memory_bound)

MIB = 1024 * 1024

HEADER_RULES = """\
(use-modules (guillemot))
(define-server #:hostname "mx.example.test")
(local-domains "example.test" "localhost")
(deliver-local (maildir "mail/~a/Maildir"))
(rule data "count the fields"
  (lambda (s msg)
    (let ((n (header-count msg "X-Field")))
      (unless (zero? n)
        (header-add! msg "X-Fields" (number->string n))))
    (next)))
"""


@test("an endless command line (8 MiB, no line end) is skipped in bounded memory, then one 500 5.5.2")
def _():
    with Server() as srv:
        c = srv.connect(timeout=10)
        c.ehlo(HELO)
        rss = RssSampler(srv.proc.pid)
        chunk = b"MAIL FROM:<" + b"a" * (64 * 1024 - 11)
        for i in range(8 * MIB // len(chunk)):
            c.send(chunk)
            rss.sample()
        c.send(b"@origin.test>\r\n")
        c.expect(500, "5.5.2")
        end = rss.report("8 MiB command line")
        memory_bound(rss.peak - rss.start < 4 * 1024, "the line was kept: RSS grew %d KiB" % (rss.peak - rss.start))
        c.send_expect("RCPT TO:<x@example.test>", 503, "5.5.1")   # the MAIL did not happen
        c.send_expect("NOOP", 250)
        still_serves(srv)


@test("an endless message line (20 MiB, no line end) ends in 552 5.3.4, in bounded memory")
def _():
    with Server(settings={"max-message-size": 10240000}) as srv:
        c = open_transaction(srv, ["endless@example.test"], timeout=20)
        c.send_expect("DATA", 354)
        rss = RssSampler(srv.proc.pid, interval=0)
        chunk = b"x" * (128 * 1024)
        for i in range(20 * 8):
            c.send(chunk)
            rss.sample()
        c.send(b"\r\n.\r\n")
        c.expect(552, "5.3.4")
        time.sleep(0.2)
        end = rss.report("20 MiB message line, max-message-size 10240000")
        # The message is held until it reaches max-message-size, then dropped.
        memory_bound(rss.peak - rss.start < 48 * 1024, "RSS grew %d KiB" % (rss.peak - rss.start))
        memory_bound(end - rss.start < 8 * 1024, "memory kept after the 552: %d KiB" % (end - rss.start))
        c.send_expect("NOOP", 250)
        time.sleep(0.2)
        assert not srv.maildir_files("endless")
        still_serves(srv)


@test("a header line longer than max-header-size: 552 5.3.4; a long one within it is delivered intact")
def _():
    with Server() as srv:                        # max-header-size: the default, 1 MiB
        c = open_transaction(srv, ["longhdr@example.test"], timeout=20)
        c.send_expect("DATA", 354)
        c.send(stuff(b"Subject: one long line\r\nX-Long: " + b"h" * (MIB + 1000) + b"\r\n\r\nbody\r\n"))
        c.expect(552, "5.3.4 Message header size exceeds fixed limit")
        c.send_expect("NOOP", 250)
        message = b"Subject: one long line\r\nX-Long: " + b"h" * (MIB - 100) + b"\r\n\r\nbody\r\n"
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        c.send_expect("RCPT TO:<longhdr@example.test>", 250)
        c.send_expect("DATA", 354)
        c.send(stuff(message))
        qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
        f = srv.wait_maildir("longhdr", 1, settle=0.3)[0]
        check_delivered(read_file(f), SENDER, "longhdr@example.test", HELO, "127.0.0.1", qid,
                        ["longhdr@example.test"], message)
        still_serves(srv)


@test("a header section of 150 000 fields is over max-header-size (552 5.3.4); 50 000 pass and rules count them")
def _():
    with Server(config_text=HEADER_RULES) as srv:
        c = open_transaction(srv, ["fields@example.test"], timeout=20)
        field = b"X-Field: 0123\r\n"               # 15 bytes
        c.send_expect("DATA", 354)
        c.send(stuff(b"Subject: many\r\n" + field * 150000 + b"\r\nbody\r\n"))   # 2.2 MB
        c.expect(552, "5.3.4")
        # The same bytes as body lines are no header: accepted.
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        c.send_expect("RCPT TO:<fields@example.test>", 250)
        c.send_expect("DATA", 354)
        in_body = b"Subject: many in the body\r\n\r\n" + field * 150000
        c.send(stuff(in_body))
        qid1 = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
        # 50 000 fields, 750 KB: within the limit; the data rule reads them all.
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        c.send_expect("RCPT TO:<fields@example.test>", 250)
        c.send_expect("DATA", 354)
        message = b"Subject: many\r\n" + field * 50000 + b"\r\nbody\r\n"
        t0 = time.monotonic()
        c.send(stuff(message))
        qid2 = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
        files = srv.wait_maildir("fields", 2, settle=0.3)
        by_id = {qid: [f for f in files if qid in f][0] for qid in (qid1, qid2)}
        check_delivered(read_file(by_id[qid1]), SENDER, "fields@example.test", HELO, "127.0.0.1",
                        qid1, ["fields@example.test"], in_body)
        check_delivered(read_file(by_id[qid2]), SENDER, "fields@example.test", HELO, "127.0.0.1",
                        qid2, ["fields@example.test"], b"X-Fields: 50000\r\n" + message)
        still_serves(srv)


@test("max-header-size=3M takes the 2.2 MB header section that the default refuses")
def _():
    with Server(settings={"max-header-size": "3M"}) as srv:
        c = open_transaction(srv, ["bighdr@example.test"], timeout=20)
        message = b"Subject: many\r\n" + b"X-Field: 0123\r\n" * 150000 + b"\r\nbody\r\n"
        c.send_expect("DATA", 354)
        c.send(stuff(message))
        qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
        f = srv.wait_maildir("bighdr", 1)[0]
        check_delivered(read_file(f), SENDER, "bighdr@example.test", HELO, "127.0.0.1", qid,
                        ["bighdr@example.test"], message)
        still_serves(srv)


run()
