"""Helpers shared by the policy tests (test_policy.py, test_policy_more.py,
test_policy_queue.py): a configuration with rules, a transaction, and checks
on what was delivered."""

import os
import re

from harness import read_file, send_transaction, Server

HELO = "client.example.test"
SENDER = "sender@origin.test"
FAILURE = "451 4.3.0 Temporary policy failure"

BASE = """\
(use-modules (guillemot))
(define-server #:hostname "mx.example.test")
(local-domains "example.test" "localhost")
(deliver-local (maildir "mail/~a/Maildir"))
"""

MSG = b"From: sender@origin.test\r\nSubject: policy\r\n\r\nHello.\r\n"


def policy_server(rules, start=True, **kw):
    """A Server whose configuration is BASE followed by RULES (Scheme text)."""
    srv = Server(config_text=BASE + rules, **kw)
    if start:
        srv.start()
    return srv


def transaction(c, rcpts, body=MSG, sender=SENDER):
    """MAIL, RCPTs (all expected 250), DATA: returns the queue id."""
    return send_transaction(c, rcpts, body, sender)


def assert_no_mail(srv, *locals_):
    for local in locals_:
        files = srv.maildir_files(local)
        assert not files, "mail was delivered to %s: %r" % (local, files)


def assert_not_delivered(srv, qid):
    """QID never reached the spool or a mailbox (checked after the server had
    time to deliver a later message)."""
    log = srv.log_text()
    assert not re.search(r"%s: to=<" % re.escape(qid), log), \
        "%s was delivered:\n%s" % (qid, log)
    assert not [f for f in srv.spool_files("queue") if qid in f], "%s is in the queue" % qid


def deliver_marker(c, srv, local="marker"):
    """Deliver one more message on C and wait for it: anything the server was
    going to do with earlier messages is done by then (one queue, in order)."""
    qid = transaction(c, ["%s@example.test" % local])
    srv.wait_maildir(local, 1)
    srv.wait_log(r"%s: to=<%s@example\.test>.*status=sent" % (qid, local))
    return qid


def delivered_one(srv, local, qid):
    files = srv.wait_maildir(local, 1)
    assert qid in os.path.basename(files[0]), (qid, files)
    return read_file(files[0])
