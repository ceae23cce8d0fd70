"""Policy rules, second slice, end to end: the quarantine verdict, envelope
changes (set-sender!, add-recipient!, remove-recipient!, deliver-to!), the
header procedures header-has?, header-count, header-set! and header-rename!,
waiting without blocking (pause, suspend) and #:rule-time-limit.

Like test_policy.py, each test writes its own configuration, runs the real
server on loopback ports and drives it over raw sockets; delivered files and
quarantined queue files are checked byte for byte where their content
matters, and timings where the point is that sessions do not wait for each
other."""

import sys
sys.dont_write_bytecode = True     # no __pycache__ in the source tree

import os
import re
import signal
import socket
import time

from harness import (as_stored, assert_equal, assert_in, check_delivered, cmd_line, expect_line,
                     make_tempdir, queue_id, read_file, received_block, run, run_guillemot, stuff,
                     test, wait_for)
from policy_helpers import (BASE, FAILURE, HELO, MSG, SENDER, assert_no_mail, assert_not_delivered,
                            deliver_marker, delivered_one, policy_server, transaction)

# ---------------------------------------------------------------------------
# Helpers

def config_line(srv, needle):
    """FILE:LINE of the first line of SRV's configuration containing NEEDLE,
    as policy error lines give it."""
    with open(srv.config, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if needle in line:
                return "%s:%d" % (srv.config, n)
    raise AssertionError("%r not in the configuration" % needle)


def received_line(srv, qid):
    """The "ID: client=..." line logged when QID was queued."""
    return srv.wait_log(r"%s: client=\[127\.0\.0\.1\]:\d+, [^\n]*" % re.escape(qid))[0]


def parse_queue_file(data):
    """A queue file's records as a list of (tag, value) and the message bytes;
    asserts the magic line and that the M record counts what follows."""
    head, sep, rest = data.partition(b"\nM ")
    assert sep, "no M record in %r" % data[:300]
    length, _, message = rest.partition(b"\n")
    assert_equal(int(length), len(message), "M record against the bytes that follow")
    lines = head.split(b"\n")
    assert_equal(lines[0], b"GUILLEMOT-QUEUE 1", "first line of the queue file")
    records = []
    for line in lines[1:]:
        tag, _, value = line.partition(b" ")
        records.append((tag.decode(), value.decode("utf-8")))
    return records, message


def quarantined(srv, name, qid):
    """Wait for spool/quarantine/NAME/QID and return (records, message)."""
    path = srv.path("spool", "quarantine", name, qid)
    wait_for(lambda: os.path.exists(path), 5, what=path)
    return parse_queue_file(read_file(path))


def expect_quarantined(srv, name, qid, sender, rcpts, message, helo=HELO):
    """QID is in quarantine NAME with exactly these records and message."""
    records, stored = quarantined(srv, name, qid)
    expected = [("I", qid), ("A", records[1][1]), ("C", "127.0.0.1"), ("H", helo),
                ("P", "ESMTP"), ("S", sender)]
    for r in rcpts:
        expected += [("RP", r), ("T", "maildir " + srv.maildir(r.split("@")[0]))]
    assert_equal(records, expected, "records of the quarantined queue file")
    rx = re.compile(received_block(helo, "127.0.0.1", qid, rcpts) + re.escape(as_stored(message))
                    + rb"\Z", re.S)
    assert rx.match(stored), "quarantined message differs:\n  expected (regex): %r\n  actual: %r" \
        % (rx.pattern, stored)


def timed_reply(c):
    """Read one reply on C; returns (reply, seconds waited)."""
    t0 = time.monotonic()
    r = c.reply()
    return r, time.monotonic() - t0


# ---------------------------------------------------------------------------
# quarantine

@test("quarantine at data: 250, kept in spool/quarantine/NAME/ID, nothing delivered, "
      "log quarantine=NAME")
def _():
    srv = policy_server("""
(rule data "spam aside"
  (lambda (s msg)
    (if (header-has? msg "X-Spam-Flag") (quarantine "spam") (next))))
""")
    c = srv.connect()
    c.ehlo(HELO)
    spam = b"From: sender@origin.test\r\nX-Spam-Flag: YES\r\nSubject: buy\r\n\r\nBuy now.\r\n"
    qid = transaction(c, ["q1@example.test", "q2@example.test"], body=spam)
    expect_quarantined(srv, "spam", qid, SENDER, ["q1@example.test", "q2@example.test"], spam)
    line = received_line(srv, qid)
    assert line.endswith(", nrcpt=2, quarantine=spam"), line
    # The mark ends with the message: the next one is delivered as usual.
    marker = deliver_marker(c, srv)
    assert not received_line(srv, marker).endswith("quarantine=spam")
    assert_not_delivered(srv, qid)
    assert_no_mail(srv, "q1", "q2")
    assert_equal(os.listdir(srv.path("spool", "quarantine")), ["spam"], "quarantine directories")
    assert_equal(os.listdir(srv.path("spool", "quarantine", "spam")), [qid], "quarantined files")


@test("quarantine at rcpt: the message of an accepted recipient is kept aside, for every "
      "recipient; a refused recipient marks nothing; the mark ends with the message")
def _():
    srv = policy_server("""
(rule rcpt "audit"
  (lambda (s rcpt)
    (if (string-prefix? "audit@" rcpt) (quarantine "audit") (next))))
""")
    c = srv.connect()
    c.ehlo(HELO)
    # A recipient that the routing refuses marks nothing.
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    cmd_line(c, "RCPT TO:<audit@elsewhere.test>",
             "554 5.7.1 <audit@elsewhere.test>: Relay access denied")
    c.send_expect("RCPT TO:<plain@example.test>", 250)
    c.send_expect("DATA", 354)
    c.send(stuff(MSG))
    first = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
    delivered_one(srv, "plain", first)
    assert "quarantine=" not in received_line(srv, first)
    # An accepted one marks the whole message.
    second = transaction(c, ["plain@example.test", "audit@example.test"])
    expect_quarantined(srv, "audit", second, SENDER, ["plain@example.test", "audit@example.test"],
                       MSG)
    assert received_line(srv, second).endswith(", nrcpt=2, quarantine=audit")
    deliver_marker(c, srv)
    assert_not_delivered(srv, second)
    assert_equal(len(srv.maildir_files("plain")), 1, "copies delivered to plain")
    assert_no_mail(srv, "audit")


@test("quarantine with an invalid name: 451 4.3.0 and the rule named in the log; "
      "a valid name with . _ - works, and the last quarantine named wins")
def _():
    srv = policy_server(r"""
(define names
  `(("dots" . "..") ("slash" . "a/b") ("hidden" . ".hidden") ("empty" . "")
    ("long" . ,(make-string 65 #\x)) ("symbol" . spam) ("space" . "a b")
    ("max" . ,(make-string 64 #\y)) ("ok" . "a.b_c-1")))
(rule rcpt "named quarantine"
  (lambda (s rcpt)
    (let ((name (assoc-ref names (address-local rcpt))))
      (if name (quarantine name) (next)))))
""")
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    bad = ["dots", "slash", "hidden", "empty", "long", "symbol", "space"]
    for local in bad:
        cmd_line(c, "RCPT TO:<%s@example.test>" % local, FAILURE)
    where = config_line(srv, '(rule rcpt "named quarantine"')
    errors = srv.wait_log(r'policy error: rule "named quarantine" \(rcpt, %s\) failed: '
                          r'quarantine: invalid name ([^\n]*)' % re.escape(where), count=len(bad))
    assert_equal(errors[0], '".." (letters, digits, . _ -, not starting with a dot)', "first error")
    c.send_expect("RCPT TO:<max@example.test>", 250)
    c.send_expect("RCPT TO:<ok@example.test>", 250)
    c.send_expect("DATA", 354)
    c.send(stuff(MSG))
    qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
    expect_quarantined(srv, "a.b_c-1", qid, SENDER, ["max@example.test", "ok@example.test"], MSG)
    assert received_line(srv, qid).endswith("quarantine=a.b_c-1")
    assert_equal(sorted(os.listdir(srv.path("spool", "quarantine"))), ["a.b_c-1"],
                 "quarantine directories (nothing made for the refused names)")


# ---------------------------------------------------------------------------
# Envelope changes

@test("set-sender! at the mail stage: Return-Path and from= change, later rules see the new "
      "sender, \"\" gives <>; an invalid address fails the rule and opens no transaction")
def _():
    srv = policy_server("""
(rule mail "rewrite"
  (lambda (s from)
    (cond ((string=? from "old@origin.test") (set-sender! s "new@origin.test"))
          ((string=? from "nullify@origin.test") (set-sender! s ""))
          ((string=? from "bad@origin.test") (set-sender! s "not an address")))
    (log-message s "mail rule: arg=~a sender=~s" from (sender s))
    (next)))
(rule mail "second"
  (lambda (s from) (log-message s "second mail rule: arg=~a sender=~s" from (sender s)) (next)))
(rule rcpt "see" (lambda (s rcpt) (log-message s "rcpt rule: sender=~s" (sender s)) (next)))
""")
    c = srv.connect()
    c.ehlo(HELO)
    cmd_line(c, "MAIL FROM:<old@origin.test>", "250 2.1.0 Ok")
    c.send_expect("RCPT TO:<ss@example.test>", 250)
    c.send_expect("DATA", 354)
    c.send(stuff(MSG))
    qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
    content = delivered_one(srv, "ss", qid)
    check_delivered(content, "new@origin.test", "ss@example.test", HELO, "127.0.0.1", qid,
                    ["ss@example.test"], MSG)
    log = srv.log_text()
    assert_in('mail rule: arg=old@origin.test sender="new@origin.test"\n', log, "server log")
    assert_in('second mail rule: arg=old@origin.test sender="new@origin.test"\n', log, "server log")
    assert_in('rcpt rule: sender="new@origin.test"\n', log, "server log")
    assert_in("from=<new@origin.test>", received_line(srv, qid), "client= line")

    qid = transaction(c, ["null@example.test"], sender="nullify@origin.test")
    content = delivered_one(srv, "null", qid)
    check_delivered(content, "", "null@example.test", HELO, "127.0.0.1", qid,
                    ["null@example.test"], MSG)
    assert_in("from=<>,", received_line(srv, qid), "client= line")

    cmd_line(c, "MAIL FROM:<bad@origin.test>", FAILURE)
    c.send_expect("RCPT TO:<ss@example.test>", 503, "5.5.1")      # no transaction
    srv.wait_log(r'policy error: rule "rewrite" \(mail, %s\) failed: In procedure set-sender!: '
                 r'"not an address": ' % re.escape(config_line(srv, '(rule mail "rewrite"')))


@test("add-recipient! at rcpt (a blind copy): an extra copy with Delivered-To of the added "
      "address, headers unchanged")
def _():
    srv = policy_server("""
(rule rcpt "bcc"
  (lambda (s rcpt)
    (when (string=? rcpt "boss@example.test")
      (add-recipient! s "archive@example.test"))
    (log-message s "recipients now ~s" (recipients s))
    (next)))
""")
    c = srv.connect()
    c.ehlo(HELO)
    qid = transaction(c, ["boss@example.test"])
    rcpts = ["archive@example.test", "boss@example.test"]      # the added one comes first
    for local in ("boss", "archive"):
        content = delivered_one(srv, local, qid)
        check_delivered(content, SENDER, "%s@example.test" % local, HELO, "127.0.0.1", qid,
                        rcpts, MSG)
    assert_in('recipients now ("archive@example.test")\n', srv.log_text(), "server log")
    assert received_line(srv, qid).endswith(", nrcpt=2"), received_line(srv, qid)


@test("add-recipient! of an address in another domain: the rule fails, 451 4.3.0, "
      "nothing is added")
def _():
    srv = policy_server("""
(rule rcpt "bcc far away"
  (lambda (s rcpt)
    (when (string=? rcpt "far@example.test")
      (add-recipient! s "someone@elsewhere.test"))
    (next)))
""")
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    cmd_line(c, "RCPT TO:<far@example.test>", FAILURE)
    srv.wait_log(r'policy error: rule "bcc far away" \(rcpt, %s\) failed: In procedure '
                 r'add-recipient!: "someone@elsewhere\.test": not in a local domain'
                 % re.escape(config_line(srv, '(rule rcpt "bcc far away"')))
    c.send_expect("DATA", 554, "5.5.1")              # no recipient at all
    c.send_expect("RSET", 250)
    qid = transaction(c, ["near@example.test"])
    delivered_one(srv, "near", qid)
    assert received_line(srv, qid).endswith(", nrcpt=1")
    assert not re.search(r"to=<someone@elsewhere\.test>", srv.log_text()), srv.log_text()


@test("a rule that fails after add-recipient!: 451 4.3.0 and the added recipient is not kept")
def _():
    # A rule failure must not let mail in (Rule failures in the manual); the
    # recipient added before the error is part of what the rule did.
    srv = policy_server("""
(rule rcpt "add then fail"
  (lambda (s rcpt)
    (add-recipient! s "archive@example.test")
    (error "broken after the change")))
""")
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    cmd_line(c, "RCPT TO:<someone@example.test>", FAILURE)
    srv.wait_log(r'policy error: rule "add then fail" \(rcpt, [^)]*\) failed: broken after')
    r = c.cmd("DATA")
    if r.code == 354:
        c.send(stuff(MSG))
        c.reply()
    assert r.code == 554, ("DATA after the only RCPT got 451 was answered %r: the recipient "
                           "added by the failed rule was kept (archive gets mail the client "
                           "was never told about)" % r)


@test("remove-recipient! at the data stage: that recipient gets no copy, the others do")
def _():
    srv = policy_server("""
(rule data "drop carol"
  (lambda (s msg)
    (let* ((first (remove-recipient! s "carol@example.test"))
           (again (remove-recipient! s "carol@example.test")))
      (log-message s "removed=~a again=~a left=~s" first again (recipients s)))
    (next)))
""")
    c = srv.connect()
    c.ehlo(HELO)
    qid = transaction(c, ["alice@example.test", "carol@example.test", "dave@example.test"])
    srv.wait_log(r'%s: removed=#t again=#f left=\("alice@example\.test" "dave@example\.test"\)'
                 % qid)
    rcpts = ["alice@example.test", "dave@example.test"]
    for local in ("alice", "dave"):
        content = delivered_one(srv, local, qid)
        check_delivered(content, SENDER, "%s@example.test" % local, HELO, "127.0.0.1", qid,
                        rcpts, MSG)
    assert received_line(srv, qid).endswith(", nrcpt=2")
    deliver_marker(c, srv)
    assert_no_mail(srv, "carol")
    assert "to=<carol@example.test>" not in srv.log_text(), srv.log_text()


@test("deliver-to! (mbox \"mail/~a.mbox\"): one recipient into an mbox, the others into their "
      "Maildirs")
def _():
    srv = policy_server("""
(rule data "bob reads mbox"
  (lambda (s msg)
    (when (member "bob@example.test" (recipients s))
      (deliver-to! s "bob@example.test" (mbox "mail/~a.mbox")))
    (next)))
""")
    c = srv.connect()
    c.ehlo(HELO)
    rcpts = ["alice@example.test", "bob@example.test", "carol@example.test"]
    qid = transaction(c, rcpts)
    for local in ("alice", "carol"):
        content = delivered_one(srv, local, qid)
        check_delivered(content, SENDER, "%s@example.test" % local, HELO, "127.0.0.1", qid,
                        rcpts, MSG)
    srv.wait_log(r"%s: to=<bob@example\.test>, relay=mbox, .*status=sent \(delivered to %s\)"
                 % (qid, re.escape(srv.mbox_path("bob"))))
    content = read_file(srv.mbox_path("bob"))
    rx = re.compile(rb"From " + re.escape(SENDER.encode()) + rb" \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\n"
                    + re.escape(("Return-Path: <%s>\nDelivered-To: bob@example.test\n"
                                 % SENDER).encode())
                    + received_block(HELO, "127.0.0.1", qid, rcpts) + re.escape(as_stored(MSG))
                    + rb"\n\Z", re.S)
    assert rx.match(content), "mbox content differs:\n  expected (regex): %r\n  actual: %r" \
        % (rx.pattern, content)
    assert_no_mail(srv, "bob")
    assert not os.path.exists(srv.maildir("bob")), "a Maildir was made for bob"
    srv.wait_log(r"%s: to=<alice@example\.test>, relay=maildir, " % qid)


# ---------------------------------------------------------------------------
# Headers

@test("header-set! replaces the first field in place, removes the later ones (folded included), "
      "adds at the top when absent")
def _():
    srv = policy_server("""
(rule data "set"
  (lambda (s msg)
    (log-message s "set=~a ~a" (header-set! msg "X-Tag" "new value")
                 (header-set! msg "X-Absent" "added"))
    (next)))
""")
    c = srv.connect()
    c.ehlo(HELO)
    body = (b"From: sender@origin.test\r\nX-Tag: one\r\nSubject: set\r\nx-tag: two\r\n  folded\r\n"
            b"To: a@example.test\r\nX-TAG: three\r\n\r\nX-Tag: in the body\r\n")
    expected = (b"X-Absent: added\r\nFrom: sender@origin.test\r\nX-Tag: new value\r\n"
                b"Subject: set\r\nTo: a@example.test\r\n\r\nX-Tag: in the body\r\n")
    qid = transaction(c, ["hs@example.test"], body=body)
    content = delivered_one(srv, "hs", qid)
    check_delivered(content, SENDER, "hs@example.test", HELO, "127.0.0.1", qid,
                    ["hs@example.test"], expected)
    srv.wait_log(r"%s: set=#t #f\n" % qid)


@test("header-rename! keeps every renamed field in place with its value; an invalid new name "
      "fails the rule")
def _():
    srv = policy_server("""
(rule data "rename"
  (lambda (s msg)
    (if (header-has? msg "X-Bad")
        (header-rename! msg "X-Bad" "bad name")
        (log-message s "renamed=~a none=~a" (header-rename! msg "X-SPAM" "X-Old-Spam")
                     (header-rename! msg "X-Nothing" "X-Other")))
    (next)))
""")
    c = srv.connect()
    c.ehlo(HELO)
    body = (b"From: sender@origin.test\r\nX-Spam:  yes, very\r\n\tfolded\r\nSubject: rename\r\n"
            b"x-spam: no\r\n\r\nX-Spam: body\r\n")
    expected = (b"From: sender@origin.test\r\nX-Old-Spam:  yes, very\r\n\tfolded\r\n"
                b"Subject: rename\r\nX-Old-Spam: no\r\n\r\nX-Spam: body\r\n")
    qid = transaction(c, ["hr@example.test"], body=body)
    content = delivered_one(srv, "hr", qid)
    check_delivered(content, SENDER, "hr@example.test", HELO, "127.0.0.1", qid,
                    ["hr@example.test"], expected)
    srv.wait_log(r"%s: renamed=2 none=0\n" % qid)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    c.send_expect("RCPT TO:<hr@example.test>", 250)
    c.send_expect("DATA", 354)
    c.send(stuff(b"X-Bad: 1\r\n\r\nbody\r\n"))
    expect_line(c, FAILURE)
    srv.wait_log(r'policy error: rule "rename" \(data, [^)]*\) failed: '
                 r'header-rename!: invalid header name "bad name"')


@test("header-has? and header-count: case-insensitive, header section only, no Received:")
def _():
    srv = policy_server("""
(rule data "count"
  (lambda (s msg)
    (log-message s "has=~a ~a ~a count=~a ~a ~a"
                 (header-has? msg "x-tag") (header-has? msg "X-Absent") (header-has? msg "Body-Only")
                 (header-count msg "X-TAG") (header-count msg "received")
                 (header-count msg "Body-Only"))
    (next)))
""")
    c = srv.connect()
    c.ehlo(HELO)
    body = (b"X-Tag: 1\r\nSubject: count\r\nx-tag: 2\r\n folded\r\nX-TAG: 3\r\n\r\n"
            b"Body-Only: not a header\r\n")
    qid = transaction(c, ["hc@example.test"], body=body)
    srv.wait_log(r"%s: has=#t #f #f count=3 0 0\n" % qid)


# ---------------------------------------------------------------------------
# Waiting without blocking

@test("pause: three sessions each pausing 1 s in an rcpt rule are done in about 1 s, not 3",
      timeout=20)
def _():
    srv = policy_server("""
(rule rcpt "slow" (lambda (s rcpt) (pause 1) (next)))
""")
    clients = []
    for _ in range(3):
        c = srv.connect()
        c.ehlo(HELO)
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        clients.append(c)
    t0 = time.monotonic()
    for n, c in enumerate(clients):
        c.send("RCPT TO:<p%d@example.test>\r\n" % n)
    for c in clients:
        expect_line(c, "250 2.1.5 Ok")
    elapsed = time.monotonic() - t0
    assert 0.9 <= elapsed < 1.8, "three paused sessions took %.2fs (expected about 1s)" % elapsed
    for n, c in enumerate(clients):
        c.send_expect("DATA", 354)
        c.send(stuff(MSG))
        c.expect(250, "2.0.0 Ok: queued as")
        srv.wait_maildir("p%d" % n, 1)
    assert "policy error" not in srv.log_text(), srv.log_text()


@test("a session in pause reads nothing meanwhile and does not delay another session's "
      "transaction", timeout=20)
def _():
    srv = policy_server("""
(rule rcpt "tarpit"
  (lambda (s rcpt)
    (when (string-prefix? "slow@" rcpt) (pause 3))
    (next)))
""")
    slow = srv.connect()
    slow.ehlo(HELO)
    slow.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    t0 = time.monotonic()
    slow.send("RCPT TO:<slow@example.test>\r\nNOOP\r\n")       # pipelined
    time.sleep(0.2)
    fast = srv.connect()
    fast.ehlo(HELO)
    qid = transaction(fast, ["fast@example.test"])
    delivered_one(srv, "fast", qid)
    fast_done = time.monotonic() - t0
    assert fast_done < 1.5, "the other session's transaction took %.2fs" % fast_done
    slow.sock.settimeout(6)
    r = slow.reply()
    waited = time.monotonic() - t0
    # The first reply is the RCPT's: the NOOP was not read during the pause.
    assert_equal(r.last, "250 2.1.5 Ok", "first reply after the pause")
    assert waited >= 2.8, "the paused RCPT was answered after %.2fs, before its pause ended" % waited
    slow.expect(250)                                          # the NOOP
    slow.send_expect("DATA", 354)
    slow.send(stuff(MSG))
    qid = queue_id(slow.expect(250, "2.0.0 Ok: queued as"))
    delivered_one(srv, "slow", qid)


@test("pause inside a data rule: header-add! and add-recipient! after the pause land in the "
      "delivered files")
def _():
    srv = policy_server("""
(rule data "late tag"
  (lambda (s msg)
    (pause 0.5)
    (header-add! msg "X-After-Pause" "yes")
    (add-recipient! s "late@example.test")
    (log-message s "after the pause: ~s, size=~a" (recipients s) (message-size s))
    (next)))
""")
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    c.send_expect("RCPT TO:<early@example.test>", 250)
    c.send_expect("DATA", 354)
    c.send(stuff(MSG))
    r, waited = timed_reply(c)
    qid = queue_id(c.expect(250, "2.0.0 Ok: queued as", reply=r))
    assert waited >= 0.45, "the data rule's pause lasted %.2fs" % waited
    rcpts = ["early@example.test", "late@example.test"]
    for local in ("early", "late"):
        content = delivered_one(srv, local, qid)
        check_delivered(content, SENDER, "%s@example.test" % local, HELO, "127.0.0.1", qid,
                        rcpts, b"X-After-Pause: yes\r\n" + MSG)
    srv.wait_log(r'%s: after the pause: \("early@example\.test" "late@example\.test"\), size=%d\n'
                 % (qid, len(MSG)))


@test("a pause does not count toward #:rule-time-limit")
def _():
    srv = policy_server("""
(rule rcpt "wait" (lambda (s rcpt) (pause 1) (next)))
""", settings={"rule-time-limit": 200})
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    c.send("RCPT TO:<w@example.test>\r\n")
    r, waited = timed_reply(c)
    assert_equal(r.last, "250 2.1.5 Ok", "reply after a 1 s pause with a 200 ms limit")
    assert waited >= 0.95, waited
    assert "interrupted" not in srv.log_text(), srv.log_text()


@test("a runaway rule with #:rule-time-limit 200: 451 4.3.0 within about 0.5 s, logged "
      "\"interrupted\", and the server serves the next session normally", timeout=20)
def _():
    srv = policy_server("""
(rule rcpt "runaway"
  (lambda (s rcpt)
    (when (string-prefix? "loop@" rcpt) (let loop () (loop)))
    (next)))
""", settings={"rule-time-limit": 200})
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    c.send("RCPT TO:<loop@example.test>\r\n")
    r, waited = timed_reply(c)
    assert_equal(r.last, FAILURE, "reply to the RCPT whose rule loops")
    assert 0.15 <= waited < 0.6, "interrupted after %.2fs (limit 200 ms)" % waited
    srv.wait_log(r'policy error: rule "runaway" \(rcpt, %s\) failed: interrupted: it ran longer '
                 r'than #:rule-time-limit\n' % re.escape(config_line(srv, '(rule rcpt "runaway"')))
    # The same session goes on, and so does a new one.
    c.send_expect("RCPT TO:<after@example.test>", 250)
    c.send_expect("DATA", 354)
    c.send(stuff(MSG))
    qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
    delivered_one(srv, "after", qid)
    d = srv.connect()
    d.ehlo(HELO)
    t0 = time.monotonic()
    qid = transaction(d, ["next@example.test"])
    assert time.monotonic() - t0 < 1.0
    delivered_one(srv, "next", qid)


@test("SIGTERM: a session whose rule pauses for 600 s does not hold the shutdown past "
      "#:shutdown-timeout", timeout=20)
def _():
    srv = policy_server("""
(rule rcpt "long pause" (lambda (s rcpt) (pause 600) (next)))
""", settings={"shutdown-timeout": 1})
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    c.send("RCPT TO:<waits@example.test>\r\n")
    time.sleep(0.2)
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    assert_equal(srv.wait_exit(8), 0, "exit status after SIGTERM")
    assert time.monotonic() - t0 < 4, "exit took %.1fs" % (time.monotonic() - t0)
    srv.wait_log(r"shutting down: 1 session\(s\) still waiting for their rules, stopping anyway")


@test("a runaway loop inside (catch #t ...) is interrupted all the same: the limit is not an "
      "exception a rule can catch", timeout=20)
def _():
    srv = policy_server("""
(rule rcpt "catches everything"
  (lambda (s rcpt)
    (catch #t
      (lambda () (when (string-prefix? "loop@" rcpt) (let loop () (loop))))
      (lambda args (log-message s "caught ~s" args)))
    (next)))
""", settings={"rule-time-limit": 200})
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    c.send("RCPT TO:<loop@example.test>\r\n")
    r, waited = timed_reply(c)
    assert_equal(r.last, FAILURE, "reply to the RCPT whose rule loops")
    assert waited < 0.6, "interrupted after %.2fs (limit 200 ms)" % waited
    srv.wait_log(r'policy error: rule "catches everything" \(rcpt, %s\) failed: interrupted'
                 % re.escape(config_line(srv, '(rule rcpt "catches everything"')))
    assert "caught" not in srv.log_text(), "the rule's catch saw the interruption"
    c.send_expect("RCPT TO:<after@example.test>", 250)


@test("a rule that runs away after a pause, while another session's rules ran, is interrupted "
      "too", timeout=25)
def _():
    srv = policy_server("""
(rule rcpt "pause then spin"
  (lambda (s rcpt)
    (when (string-prefix? "spin@" rcpt)
      (pause 0.5)
      (let loop () (loop)))
    (next)))
""", settings={"rule-time-limit": 200})
    a = srv.connect()
    a.ehlo(HELO)
    a.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    a.send("RCPT TO:<spin@example.test>\r\n")
    time.sleep(0.1)
    # Another session's rcpt rules run to their end during the pause.
    b = srv.connect()
    b.ehlo(HELO)
    b.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    b.send_expect("RCPT TO:<other@example.test>", 250)
    a.sock.settimeout(4)
    try:
        r = a.reply()
    except socket.timeout:
        alive = True
        try:
            srv.connect(timeout=2)
        except OSError:
            alive = False
        raise AssertionError("no reply 4 s after the pause: the rule was not interrupted "
                             "(new connections %s)" % ("still greeted" if alive
                                                        else "not greeted: the server is stuck"))
    assert_equal(r.last, FAILURE, "reply to the RCPT whose rule spins after its pause")
    srv.wait_log(r'policy error: rule "pause then spin" \(rcpt, [^)]*\) failed: interrupted')


@test("(suspend 'nosuch): 451 4.3.0, a log line naming the unknown operation, the session "
      "goes on")
def _():
    srv = policy_server("""
(rule rcpt "unknown wait"
  (lambda (s rcpt)
    (when (string-prefix? "wait@" rcpt) (suspend 'nosuch 1 2))
    (next)))
""")
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    cmd_line(c, "RCPT TO:<wait@example.test>", FAILURE)
    srv.wait_log(r'policy error: a rule waits for "nosuch", which this server does not know\n')
    srv.wait_log(r"reject: client=\[127\.0\.0\.1\]:\d+, reply=%s" % FAILURE)
    c.send_expect("RCPT TO:<fine@example.test>", 250)
    c.send_expect("DATA", 354)
    c.send(stuff(MSG))
    qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
    delivered_one(srv, "fine", qid)


@test("(suspend 'pause) with a bad argument fails the rule (451 4.3.0); the server keeps running")
def _():
    srv = policy_server("""
(rule rcpt "bad wait"
  (lambda (s rcpt)
    (cond ((string-prefix? "text@" rcpt) (suspend 'pause "one second"))
          ((string-prefix? "none@" rcpt) (suspend 'pause))
          ((string-prefix? "string@" rcpt) (suspend "pause" 1)))
    (next)))
""")
    problems = []
    for local in ("text", "none", "string"):
        if not srv.running():
            srv.start()
        c = srv.connect()
        c.ehlo(HELO)
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        c.send("RCPT TO:<%s@example.test>\r\n" % local)
        try:
            r = c.reply().last
        except (ConnectionError, OSError) as e:
            r = "no reply (%s)" % e.__class__.__name__
        time.sleep(0.2)
        if r != FAILURE or not srv.running():
            problems.append("%s: reply %r, server %s" % (
                local, r, "running" if srv.running()
                else "exited with status %s" % srv.proc.returncode))
    assert not problems, "\n".join(problems) + "\n" + srv.log_tail(12)


# ---------------------------------------------------------------------------
# check-config

@test("check-config: a configuration whose rules pause is valid, with nothing on stderr")
def _():
    d = make_tempdir()
    path = os.path.join(d, "pause.scm")
    with open(path, "w", encoding="utf-8") as f:
        f.write(BASE + '(rule rcpt "tarpit" (lambda (s rcpt) (pause 1) (next)))\n')
    p = run_guillemot("check-config", "-c", path)
    assert_equal(p.returncode, 0, "exit status (stderr %r)" % p.stderr)
    assert_equal(p.stdout, "%s: configuration is valid\n" % path, "stdout")
    assert_equal(p.stderr, "", "stderr")


run()
