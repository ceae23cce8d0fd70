"""Rules after the 250: the queued stage (once per message, before its first
delivery attempt) and the delivery stage (each recipient, each attempt),
end to end with the real server, real Maildirs and mboxes, and the queue
files on disk.

Each test writes its own rules; #:retry-min 1 makes retries come after a
second, so that "deferred, then delivered" fits in a test."""

import sys
sys.dont_write_bytecode = True     # no __pycache__ in the source tree

import os
import re
import time

from harness import assert_equal, assert_in, read_file, run, send_transaction, test, wait_for
import policy_helpers
from policy_helpers import HELO, SENDER

RETRIES = {"retry-min": 1, "retry-max": 1}      # a deferred message is tried again after 1 s


def message(subject):
    return ("From: sender@origin.test\r\nSubject: %s\r\n\r\nHello.\r\n" % subject).encode()


def policy_server(rules, settings=None):
    """The policy tests' server (policy_helpers.BASE and RULES), retrying fast."""
    return policy_helpers.policy_server(rules, settings=dict(RETRIES, **(settings or {})))


def send(srv, rcpts, subject="policy"):
    """One message over a new connection; returns its queue id."""
    c = srv.connect()
    c.ehlo(HELO)
    qid = send_transaction(c, rcpts, message(subject), SENDER)
    c.send_expect("QUIT", 221)
    return qid


def records(srv, qid, where=("queue",)):
    """The records of a queue file (the lines before M) as a list of strings."""
    data = read_file(srv.path("spool", *where, qid))
    return data.partition(b"\nM ")[0].decode().split("\n")


def count_log(srv, pattern):
    return len(re.findall(pattern, srv.log_text()))


@test("queued rules see the envelope, the session facts kept in the queue file and the headers")
def _():
    srv = policy_server("""
(rule queued "look"
  (lambda (s msg)
    (log-message s "queued: id=~a from=~a to=~a client=~a helo=~a esmtp=~a size=~a subject=~s port=~a"
                 (queue-id s) (sender s) (recipients s) (client-address s) (helo-name s)
                 (esmtp? s) (message-size s) (header-ref msg "Subject") (client-port s))
    (next)))
""")
    qid = send(srv, ["ann@example.test", "bo@example.test"], "looked at")
    files = srv.wait_maildir("ann", 1)
    size = len(read_file(files[0]))
    line = srv.wait_log(r"%s: queued: [^\n]*" % qid)[0]
    m = re.search(r"size=(\d+)", line)
    assert_in("queued: id=%s from=%s to=(ann@example.test bo@example.test) client=127.0.0.1 "
              "helo=%s esmtp=#t" % (qid, SENDER, HELO), line, "queued rule's log line")
    assert_in('subject=("looked at") port=#f', line, "headers and a fact the queue file lacks")
    # The stored message, which the delivered file extends with two headers.
    assert 0 < int(m.group(1)) < size, (m.group(1), size)
    srv.wait_maildir("bo", 1)
    srv.wait_queue_empty()


@test("queued verdicts: discard removes, quarantine moves, reject bounces every recipient")
def _():
    srv = policy_server("""
(rule queued "by subject"
  (lambda (s msg)
    (let ((subject (car (header-ref msg "Subject"))))
      (cond ((string=? subject "drop") (discard))
            ((string=? subject "keep") (quarantine "later"))
            ((string=? subject "refuse") (reject 550 "5.7.1 Not after all"))
            (else (next))))))
""")
    dropped = send(srv, ["ann@example.test"], "drop")
    kept = send(srv, ["ann@example.test"], "keep")
    refused = send(srv, ["ann@example.test", "bo@example.test"], "refuse")
    fine = send(srv, ["ann@example.test"], "fine")
    srv.wait_maildir("ann", 1)
    srv.wait_log(r"%s: discarded by policy \(queued stage\)" % dropped)
    srv.wait_log(r"%s: quarantined by policy: quarantine=later" % kept)
    for rcpt in ("ann", "bo"):
        srv.wait_log(r"%s: to=<%s@example\.test>, relay=none, status=bounced \(rejected by policy: "
                     r"550 5\.7\.1 Not after all\)" % (refused, rcpt))
    srv.wait_queue_empty()
    assert_in(fine, os.path.basename(srv.maildir_files("ann")[0]), "the one delivered")
    assert_equal(srv.maildir_files("bo"), [], "bo's Maildir")
    assert_in("S " + SENDER, records(srv, kept, ("quarantine", "later")), "quarantined file")


@test("queued envelope changes are written to the queue file before delivery")
def _():
    srv = policy_server("""
(rule queued "archive, reroute, drop"
  (lambda (s msg)
    (add-recipient! s "archive@example.test")
    (remove-recipient! s "gone@example.test")
    (deliver-to! s "ann@example.test" (mbox "mbox/~a"))
    (set-sender! s "bounces@example.test")
    (next)))
(rule delivery "wait for the first attempt's end"
  ;; archive@ is deferred once: its retry reads the rewritten file.
  (let ((seen #f))
    (lambda (s rcpt)
      (if (and (string=? rcpt "archive@example.test") (not seen))
          (begin (set! seen #t) (defer 451 "4.3.0 once"))
          (next)))))
""")
    qid = send(srv, ["ann@example.test", "gone@example.test"])
    srv.wait_log(r"%s: to=<archive@example\.test>, relay=policy, .*status=deferred" % qid)
    recs = records(srv, qid)
    assert_equal(recs[6:], ["S bounces@example.test", "QD",
                            "RD ann@example.test", "T mbox " + srv.path("mbox", "ann"),
                            "O 0000000000000000",        # where its append began
                            "RP archive@example.test",
                            "T maildir " + srv.maildir("archive")], "rewritten records")
    files = srv.wait_maildir("archive", 1)
    srv.wait_queue_empty()
    assert_in(b"Return-Path: <bounces@example.test>\n", read_file(files[0]), "new sender")
    assert_in(b"\nSubject: policy\n", read_file(srv.path("mbox", "ann")), "ann's mbox")
    assert_equal(srv.maildir_files("gone"), [], "removed recipient's Maildir")
    assert_equal(count_log(srv, r"%s: to=<archive@example\.test>, relay=maildir, .*status=sent"
                           % qid), 1, "archive deliveries")


@test("queued rules run once per message; delivery rules at every attempt")
def _():
    srv = policy_server("""
(define attempts 0)
(rule queued "count" (lambda (s msg) (log-message s "queued rules ran") (next)))
(rule delivery "twice"
  (lambda (s rcpt)
    (set! attempts (1+ attempts))
    (log-message s "delivery rules ran for ~a" rcpt)
    (if (< attempts 3) (defer 450 "4.2.0 not yet") (next))))
""")
    qid = send(srv, ["ann@example.test"])
    srv.wait_maildir("ann", 1, timeout=15)
    srv.wait_queue_empty()
    assert_equal(count_log(srv, r"%s: queued rules ran" % qid), 1, "queued stage runs")
    assert_equal(count_log(srv, r"%s: delivery rules ran for ann@example\.test" % qid), 3,
                 "delivery stage runs")
    assert_equal(count_log(srv, r"%s: to=<ann@example\.test>, relay=policy, .*status=deferred "
                           r"\(deferred by policy: 450 4\.2\.0 not yet\)" % qid), 2, "deferrals")


@test("delivery verdicts per recipient: deliver-to! for one attempt, reject, discard, next")
def _():
    srv = policy_server("""
(rule delivery "route"
  (lambda (s rcpt)
    (cond ((string-prefix? "box@" rcpt) (deliver-to! s rcpt (mbox "mbox/~a")) (accept))
          ((string-prefix? "nobody@" rcpt) (reject 550 "5.1.1 No such user"))
          ((string-prefix? "void@" rcpt) (discard))
          (else (next)))))
""")
    qid = send(srv, ["box@example.test", "nobody@example.test", "void@example.test",
                     "ann@example.test"])
    srv.wait_maildir("ann", 1)
    srv.wait_queue_empty()
    srv.wait_log(r"%s: to=<box@example\.test>, relay=mbox, .*status=sent \(delivered to %s\)"
                 % (qid, re.escape(srv.path("mbox", "box"))))
    srv.wait_log(r"%s: to=<nobody@example\.test>, relay=policy, .*status=bounced \(rejected by "
                 r"policy: 550 5\.1\.1 No such user\)" % qid)
    srv.wait_log(r"%s: to=<void@example\.test>, relay=policy, .*status=discarded \(by policy\)" % qid)
    for local in ("box", "nobody", "void"):
        assert_equal(srv.maildir_files(local), [], "%s's Maildir" % local)
    assert_in(b"Delivered-To: box@example.test\n", read_file(srv.path("mbox", "box")), "mbox")


@test("queued and delivery rules wait (pause, DNS) without holding up SMTP sessions")
def _():
    srv = policy_server("""
(define-server #:dns-local-data '("route.example.test. 60 IN TXT \\"mbox\\""))
(rule queued "slow scanner" (lambda (s msg) (pause 1) (next)))
(rule delivery "route by DNS"
  (lambda (s rcpt)
    (if (equal? (dns-lookup "route.example.test" 'txt) '("mbox"))
        (begin (deliver-to! s rcpt (mbox "mbox/~a")) (next))
        (defer 451 "4.4.3 no route"))))
""")
    t0 = time.monotonic()
    qids = [send(srv, ["ann@example.test"]) for _ in range(3)]
    taken = time.monotonic() - t0
    assert taken < 1.0, "three sessions took %.2fs while queued rules paused 1s" % taken
    wait_for(lambda: count_log(srv, r"relay=mbox, .*status=sent") == 3, 10, what="3 deliveries")
    srv.wait_queue_empty()
    data = read_file(srv.path("mbox", "ann"))
    for qid in qids:
        assert_in(qid.encode(), data, "ann's mbox")


@test("a broken queued rule defers the message and keeps it queued; header changes are refused")
def _():
    srv = policy_server("""
(rule queued "edit headers"
  (lambda (s msg) (header-add! msg "X-Late" "1") (next)))
""")
    qid = send(srv, ["ann@example.test"])
    srv.wait_log(r"policy error: rule \"edit headers\" \(queued, [^)]*:\d+\) failed: .*headers can "
                 r"only change before the message is queued")
    srv.wait_log(r"%s: deferred by policy: 451 4\.3\.0 Temporary policy failure" % qid)
    assert_in("QP", records(srv, qid), "the queued rules are still to run")
    assert_equal(srv.maildir_files("ann"), [], "Maildir")


@test("a message queued while on hold meets the queued rules when delivery starts after a restart")
def _():
    rules = """
(rule queued "tag" (lambda (s msg) (log-message s "queued rules ran") (next)))
"""
    srv = policy_server(rules, settings={"delivery": "hold"})
    qid = send(srv, ["ann@example.test"])
    assert_in("QP", records(srv, qid), "queue file while on hold")
    srv.stop()
    del srv.settings["delivery"]
    srv.start()
    srv.wait_maildir("ann", 1)
    srv.wait_queue_empty()
    assert_equal(count_log(srv, r"%s: queued rules ran" % qid), 1, "queued stage runs")


run()
