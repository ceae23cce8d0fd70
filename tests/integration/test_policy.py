"""Policy rules (DESIGN.md §4, first slice) end to end: each test writes its
own configuration with (rule STAGE NAME PROC) forms, runs the real server on
loopback ports and drives it over raw sockets (or smtplib); delivered Maildir
files are checked byte for byte where their content matters."""

import sys
sys.dont_write_bytecode = True     # no __pycache__ in the source tree

import os
import re
import time

from harness import (assert_equal, assert_in, check_delivered, cmd_line, expect_line, HOSTNAME,
                     make_tempdir, queue_id, run, run_guillemot, Server, start_unprobed, stuff,
                     test)
from policy_helpers import (BASE, FAILURE, HELO, MSG, SENDER, assert_no_mail, assert_not_delivered,
                            deliver_marker, delivered_one, policy_server, transaction)

# ---------------------------------------------------------------------------
# Helpers

def line_of(text, needle):
    """1-based line number of the first line of TEXT containing NEEDLE."""
    for n, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return n
    raise AssertionError("%r not in the configuration" % needle)


def header_lines(content):
    """The header section of a delivered file, as a list of lines (bytes)."""
    head = content.split(b"\n\n", 1)[0]
    return head.split(b"\n")


# ---------------------------------------------------------------------------
# No rules at all

@test("no rules: replies and the delivered file are exactly as without the policy engine")
def _():
    srv = policy_server("", settings={"max-message-size": 123456})
    c = srv.connect(greet=False)
    expect_line(c, "220 %s ESMTP Guillemot" % HOSTNAME)
    r = c.ehlo(HELO)
    assert_equal(r.lines, [HOSTNAME, "PIPELINING", "SIZE 123456", "8BITMIME", "SMTPUTF8",
                           "ENHANCEDSTATUSCODES", "CHUNKING"], "EHLO reply")
    cmd_line(c, "MAIL FROM:<%s>" % SENDER, "250 2.1.0 Ok")
    cmd_line(c, "RCPT TO:<plain@example.test>", "250 2.1.5 Ok")
    cmd_line(c, "RCPT TO:<x@elsewhere.test>", "554 5.7.1 <x@elsewhere.test>: Relay access denied")
    cmd_line(c, "DATA", "354 End data with <CR><LF>.<CR><LF>")
    c.send(stuff(MSG))
    qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
    cmd_line(c, "QUIT", "221 2.0.0 Bye")
    content = delivered_one(srv, "plain", qid)
    check_delivered(content, SENDER, "plain@example.test", HELO, "127.0.0.1", qid,
                    ["plain@example.test"], MSG)
    assert "policy" not in srv.log_text(), srv.log_text()


# ---------------------------------------------------------------------------
# connect

CONNECT_REJECT = """
(rule connect "known bad network"
  (lambda (s)
    (if (string=? (client-address s) "127.0.0.1")
        (reject 554 "5.7.1 Access denied")
        (next))))
"""


@test("connect rule rejecting 127.0.0.1 by client-address: 554 5.7.1 as given, then closed")
def _():
    srv = start_unprobed(policy_server(CONNECT_REJECT, start=False))
    c = srv.connect(greet=False)
    expect_line(c, "554 5.7.1 Access denied")
    assert c.closed_by_server(), "the connection stayed open after the connect rejection"
    assert_equal(c.buf, b"", "bytes after the rejection")
    if srv.ipv6:
        c6 = srv.connect(ipv6=True, greet=False)       # another address: the rule says next
        expect_line(c6, "220 %s ESMTP Guillemot" % HOSTNAME)
        c6.ehlo(HELO)
        qid = transaction(c6, ["six@example.test"])
        srv.wait_maildir("six", 1)


@test("connect rule reject 550 by network (address-in?): the reply is exactly 550 and that text")
def _():
    srv = start_unprobed(policy_server("""
(rule connect "go away"
  (lambda (s)
    (if (address-in? (client-address s) "127.0.0.0/8")
        (reject 550 "5.7.1 Go away, you are not welcome")
        (next))))
""", start=False))
    c = srv.connect(greet=False)
    expect_line(c, "550 5.7.1 Go away, you are not welcome")
    assert c.closed_by_server(), "the connection stayed open after the connect rejection"


@test("connect rule defer: 4xx reply as given, then closed, and no greeting")
def _():
    srv = start_unprobed(policy_server("""
(rule connect "busy" (lambda (s) (defer 450 "4.7.1 Try again later")))
""", start=False))
    c = srv.connect(greet=False)
    expect_line(c, "450 4.7.1 Try again later")
    assert c.closed_by_server(), "the connection stayed open after the connect deferral"
    assert_equal(c.buf, b"", "bytes after the deferral")
    assert_in("reject: client=[127.0.0.1]", srv.log_text(), "server log")


@test("connect rule sees client-address, client-port, local-address, local-port of the socket")
def _():
    srv = policy_server("""
(rule connect "facts"
  (lambda (s)
    (log-message s "connect facts: ~a ~a ~a ~a helo=~s esmtp=~s sender=~s rcpts=~s"
                 (client-address s) (client-port s) (local-address s) (local-port s)
                 (helo-name s) (esmtp? s) (sender s) (recipients s))
    (next)))
""")
    c = srv.connect()
    cport = c.sock.getsockname()[1]
    line = srv.wait_log(r"connect facts: 127\.0\.0\.1 %d .*" % cport)[0]
    assert_equal(line, "connect facts: 127.0.0.1 %d 127.0.0.1 %d helo=#f esmtp=#f sender=#f rcpts=()"
                 % (cport, srv.port), "facts seen by the connect rule")


# ---------------------------------------------------------------------------
# helo

HELO_RULES = """
(rule helo "bad names"
  (lambda (s name)
    (cond ((string-ci=? name "bad.example") (reject 550 "5.7.1 Bad HELO name"))
          ((string-ci=? name "later.example") (defer 450 "4.7.1 HELO deferred"))
          (else (next)))))
(rule mail "report helo"
  (lambda (s from)
    (if (string=? from "probe@origin.test")
        (reject 550 (format #f "5.7.1 helo=~a esmtp=~a" (helo-name s) (if (esmtp? s) "yes" "no")))
        (next))))
(rule rcpt "report helo"
  (lambda (s rcpt)
    (if (string-prefix? "probe@" rcpt)
        (reject 550 (format #f "5.7.1 helo=~a esmtp=~a" (helo-name s) (if (esmtp? s) "yes" "no")))
        (next))))
"""


@test("helo rule rejects (550) and defers (450) by name; the refused name is not taken")
def _():
    srv = policy_server(HELO_RULES)
    c = srv.connect()
    cmd_line(c, "EHLO bad.example", "550 5.7.1 Bad HELO name")
    c.send_expect("MAIL FROM:<%s>" % SENDER, 503, "5.5.1")      # still no HELO
    cmd_line(c, "HELO BAD.example", "550 5.7.1 Bad HELO name")
    cmd_line(c, "EHLO later.example", "450 4.7.1 HELO deferred")
    c.send_expect("MAIL FROM:<%s>" % SENDER, 503, "5.5.1")
    c.ehlo("good.example")
    cmd_line(c, "EHLO bad.example", "550 5.7.1 Bad HELO name")
    # The refused EHLO changed nothing: the session still knows good.example.
    cmd_line(c, "MAIL FROM:<probe@origin.test>", "550 5.7.1 helo=good.example esmtp=yes")
    qid = transaction(c, ["helo@example.test"])
    content = delivered_one(srv, "helo", qid)
    check_delivered(content, SENDER, "helo@example.test", "good.example", "127.0.0.1", qid,
                    ["helo@example.test"], MSG)


@test("helo-name and esmtp? are seen by later mail and rcpt rules, after HELO and after EHLO")
def _():
    srv = policy_server(HELO_RULES)
    c = srv.connect()
    c.send_expect("HELO plain.example", 250)
    cmd_line(c, "MAIL FROM:<probe@origin.test>", "550 5.7.1 helo=plain.example esmtp=no")
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    cmd_line(c, "RCPT TO:<probe@example.test>", "550 5.7.1 helo=plain.example esmtp=no")
    c.send_expect("EHLO extended.example", 250)
    cmd_line(c, "MAIL FROM:<probe@origin.test>", "550 5.7.1 helo=extended.example esmtp=yes")
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    cmd_line(c, "RCPT TO:<probe@example.test>", "550 5.7.1 helo=extended.example esmtp=yes")
    c.send_expect("HELO again.example", 250)
    cmd_line(c, "MAIL FROM:<probe@origin.test>", "550 5.7.1 helo=again.example esmtp=no")


# ---------------------------------------------------------------------------
# mail

@test("mail rule rejects one sender (550 5.7.1 as given); the next MAIL is accepted")
def _():
    srv = policy_server("""
(rule mail "spammer"
  (lambda (s from)
    (if (string=? from "spammer@bad.test") (reject 550 "5.7.1 Sender refused") (next))))
""")
    c = srv.connect()
    c.ehlo(HELO)
    cmd_line(c, "MAIL FROM:<spammer@bad.test>", "550 5.7.1 Sender refused")
    c.send_expect("RCPT TO:<m@example.test>", 503, "5.5.1")        # no transaction opened
    cmd_line(c, "MAIL FROM:<%s>" % SENDER, "250 2.1.0 Ok")
    cmd_line(c, "RCPT TO:<m@example.test>", "250 2.1.5 Ok")
    c.send_expect("DATA", 354)
    c.send(stuff(MSG))
    qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
    content = delivered_one(srv, "m", qid)
    check_delivered(content, SENDER, "m@example.test", HELO, "127.0.0.1", qid,
                    ["m@example.test"], MSG)


@test("mail rule gets \"\" for the null sender <>, and (sender s) is \"\" in later stages")
def _():
    srv = policy_server("""
(rule mail "remember"
  (lambda (s from) (session-set! s 'mail-arg (format #f "~s" from)) (next)))
(rule rcpt "report"
  (lambda (s rcpt)
    (if (string-prefix? "report@" rcpt)
        (reject 550 (format #f "5.7.1 arg=~a sender=~s" (session-ref s 'mail-arg) (sender s)))
        (next))))
""")
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<>", 250)
    cmd_line(c, 'RCPT TO:<report@example.test>', '550 5.7.1 arg="" sender=""')
    c.send_expect("RCPT TO:<bounce@example.test>", 250)
    c.send_expect("DATA", 354)
    c.send(stuff(MSG))
    qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
    content = delivered_one(srv, "bounce", qid)
    check_delivered(content, "", "bounce@example.test", HELO, "127.0.0.1", qid,
                    ["bounce@example.test"], MSG)
    c.send_expect("MAIL FROM:<Some.One@Origin.test>", 250)
    cmd_line(c, 'RCPT TO:<report@example.test>',
             '550 5.7.1 arg="Some.One@Origin.test" sender="Some.One@Origin.test"')


# ---------------------------------------------------------------------------
# rcpt

@test("rcpt reject 550 refuses one recipient; the others of the transaction are delivered")
def _():
    srv = policy_server("""
(rule rcpt "blocked"
  (lambda (s rcpt)
    (if (string-prefix? "blocked@" rcpt) (reject 550 "5.7.1 Recipient blocked") (next))))
""")
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    cmd_line(c, "RCPT TO:<alice@example.test>", "250 2.1.5 Ok")
    cmd_line(c, "RCPT TO:<blocked@example.test>", "550 5.7.1 Recipient blocked")
    cmd_line(c, "RCPT TO:<bob@example.test>", "250 2.1.5 Ok")
    c.send_expect("DATA", 354)
    c.send(stuff(MSG))
    qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
    rcpts = ["alice@example.test", "bob@example.test"]
    for local in ("alice", "bob"):
        content = delivered_one(srv, local, qid)
        check_delivered(content, SENDER, "%s@example.test" % local, HELO, "127.0.0.1", qid,
                        rcpts, MSG)
    srv.wait_log(r"%s: to=<bob@example.test>.*status=sent" % qid)
    assert_no_mail(srv, "blocked")
    assert_in("nrcpt=2", srv.log_text(), "server log")


@test("rcpt defer 450 refuses one recipient for now; the others are delivered")
def _():
    srv = policy_server("""
(rule rcpt "greylist"
  (lambda (s rcpt)
    (if (string-prefix? "grey@" rcpt) (defer 450 "4.7.1 Greylisted, try again") (next))))
""")
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    cmd_line(c, "RCPT TO:<grey@example.test>", "450 4.7.1 Greylisted, try again")
    cmd_line(c, "RCPT TO:<carol@example.test>", "250 2.1.5 Ok")
    c.send_expect("DATA", 354)
    c.send(stuff(MSG))
    qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
    content = delivered_one(srv, "carol", qid)
    check_delivered(content, SENDER, "carol@example.test", HELO, "127.0.0.1", qid,
                    ["carol@example.test"], MSG)
    srv.wait_log(r"%s: to=<carol@example.test>.*status=sent" % qid)
    assert_no_mail(srv, "grey")


@test("rcpt defer only: with every recipient deferred, DATA gets 554 5.5.1 no valid recipients")
def _():
    srv = policy_server("""
(rule rcpt "greylist all" (lambda (s rcpt) (defer 450 "4.7.1 Greylisted")))
""")
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    cmd_line(c, "RCPT TO:<grey@example.test>", "450 4.7.1 Greylisted")
    c.send_expect("DATA", 554, "5.5.1")


@test("rcpt (accept) skips the later rcpt rules (a later rule that would reject does not run)")
def _():
    srv = policy_server("""
(rule rcpt "whitelist"
  (lambda (s rcpt) (if (string=? rcpt "vip@example.test") (accept) (next))))
(rule rcpt "refuse vip*"
  (lambda (s rcpt)
    (if (string-prefix? "vip" rcpt) (reject 550 "5.7.1 second rule ran") (next))))
""")
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    cmd_line(c, "RCPT TO:<vipx@example.test>", "550 5.7.1 second rule ran")   # rule 2 is live
    cmd_line(c, "RCPT TO:<vip@example.test>", "250 2.1.5 Ok")
    c.send_expect("DATA", 354)
    c.send(stuff(MSG))
    qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
    content = delivered_one(srv, "vip", qid)
    check_delivered(content, SENDER, "vip@example.test", HELO, "127.0.0.1", qid,
                    ["vip@example.test"], MSG)


@test("rcpt (next) for a non-local domain: the built-in relay refusal 554 5.7.1 still applies")
def _():
    srv = policy_server("""
(rule rcpt "let everything through" (lambda (s rcpt) (next)))
""")
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    cmd_line(c, "RCPT TO:<x@elsewhere.test>", "554 5.7.1 <x@elsewhere.test>: Relay access denied")
    c.send_expect("DATA", 554, "5.5.1")      # no valid recipients
    c.send_expect("RSET", 250)
    qid = transaction(c, ["local@example.test"])
    srv.wait_maildir("local", 1)


@test("recipients: rcpt rules see those accepted so far; the data rule sees all accepted ones")
def _():
    srv = policy_server("""
(rule rcpt "count"
  (lambda (s rcpt)
    (cond ((string-prefix? "report@" rcpt)
           (reject 550 (format #f "5.7.1 so-far=~a" (string-join (recipients s) ","))))
          ((string-prefix? "no@" rcpt) (reject 550 "5.7.1 no"))
          (else (next)))))
(rule data "list"
  (lambda (s msg)
    (header-add! msg "X-Rcpts" (string-join (recipients s) ","))
    (header-add! msg "X-Sender" (sender s))
    (next)))
""")
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    cmd_line(c, "RCPT TO:<report@example.test>", "550 5.7.1 so-far=")
    c.send_expect("RCPT TO:<one@example.test>", 250)
    c.send_expect("RCPT TO:<no@example.test>", 550)
    c.send_expect("RCPT TO:<Two@localhost>", 250)
    c.send_expect("RCPT TO:<x@elsewhere.test>", 554)
    c.send_expect("RCPT TO:<one@example.test>", 250)          # duplicate: counted once
    cmd_line(c, "RCPT TO:<report@example.test>", "550 5.7.1 so-far=one@example.test,Two@localhost")
    c.send_expect("DATA", 354)
    c.send(stuff(MSG))
    qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
    rcpts = ["one@example.test", "Two@localhost"]
    expected = (b"X-Sender: sender@origin.test\r\nX-Rcpts: one@example.test,Two@localhost\r\n"
                + MSG)
    for local, rcpt in (("one", rcpts[0]), ("two", rcpts[1])):
        content = delivered_one(srv, local, qid)
        check_delivered(content, SENDER, rcpt, HELO, "127.0.0.1", qid, rcpts, expected)


@test("pipelined MAIL, RCPTs and DATA in one write: each rcpt verdict answers its own RCPT")
def _():
    srv = policy_server("""
(rule mail "tag" (lambda (s from) (session-set! s 'mails (1+ (session-ref s 'mails 0))) (next)))
(rule rcpt "blocked"
  (lambda (s rcpt)
    (cond ((string-prefix? "blocked@" rcpt) (reject 550 "5.7.1 Recipient blocked"))
          ((string-prefix? "grey@" rcpt) (defer 450 "4.7.1 Greylisted"))
          (else (next)))))
(rule data "stamp"
  (lambda (s msg) (header-add! msg "X-Mails" (number->string (session-ref s 'mails))) (next)))
""")
    c = srv.connect()
    c.ehlo(HELO)
    c.send(("MAIL FROM:<%s>\r\nRCPT TO:<p1@example.test>\r\nRCPT TO:<blocked@example.test>\r\n"
            "RCPT TO:<grey@example.test>\r\nRCPT TO:<p2@example.test>\r\nDATA\r\n" % SENDER).encode()
           + stuff(MSG) + b"NOOP\r\n")
    expect_line(c, "250 2.1.0 Ok")
    expect_line(c, "250 2.1.5 Ok")
    expect_line(c, "550 5.7.1 Recipient blocked")
    expect_line(c, "450 4.7.1 Greylisted")
    expect_line(c, "250 2.1.5 Ok")
    expect_line(c, "354 End data with <CR><LF>.<CR><LF>")
    qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
    expect_line(c, "250 2.0.0 Ok")
    rcpts = ["p1@example.test", "p2@example.test"]
    for local in ("p1", "p2"):
        check_delivered(delivered_one(srv, local, qid), SENDER, "%s@example.test" % local, HELO,
                        "127.0.0.1", qid, rcpts, b"X-Mails: 1\r\n" + MSG)


# ---------------------------------------------------------------------------
# Reply codes and texts

@test("enhanced status code added when missing: (reject 550 \"No\") -> 550 5.7.1 No, defer -> 4.7.1")
def _():
    srv = policy_server("""
(rule rcpt "codes"
  (lambda (s rcpt)
    (cond ((string-prefix? "no@" rcpt) (reject 550 "No"))
          ((string-prefix? "later@" rcpt) (defer 450 "Later"))
          ((string-prefix? "empty@" rcpt) (reject 553 ""))
          ((string-prefix? "esc@" rcpt) (reject 550 "5.1.1"))
          ((string-prefix? "own@" rcpt) (reject 551 "5.1.6 Moved away"))
          (else (next)))))
""")
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    cmd_line(c, "RCPT TO:<no@example.test>", "550 5.7.1 No")
    cmd_line(c, "RCPT TO:<later@example.test>", "450 4.7.1 Later")
    cmd_line(c, "RCPT TO:<empty@example.test>", "553 5.7.1 Rejected by policy")
    cmd_line(c, "RCPT TO:<esc@example.test>", "550 5.1.1 Rejected by policy")
    cmd_line(c, "RCPT TO:<own@example.test>", "551 5.1.6 Moved away")
    c.send_expect("RCPT TO:<ok@example.test>", 250)
    c.send_expect("DATA", 354)
    c.send(stuff(MSG))
    c.expect(250, "2.0.0 Ok: queued as")
    srv.wait_maildir("ok", 1)


@test("wrong class inside a rule: (reject 450 ...) at run time raises, the client gets 451 4.3.0, log says policy error")
def _():
    # The code is computed: a literal (reject 450 ...) is refused at load time.
    text = BASE + """
(define greylist-code 450)
(rule rcpt "wrong class"
  (lambda (s rcpt)
    (if (string-prefix? "wrong@" rcpt) (reject greylist-code "4.7.1 Not a rejection") (next))))
"""
    srv = Server(config_text=text).start()
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    cmd_line(c, "RCPT TO:<wrong@example.test>", FAILURE)
    line = srv.wait_log(r"policy error: rule \"wrong class\" \(rcpt, [^)]*\) failed: .*")[0]
    assert_in("%s:%d" % (srv.config, line_of(text, '(rule rcpt "wrong class"')), line, "log line")
    assert_in("450", line, "log line")
    c.send_expect("RCPT TO:<right@example.test>", 250)      # the session goes on
    c.send_expect("DATA", 354)
    c.send(stuff(MSG))
    c.expect(250, "2.0.0 Ok: queued as")
    srv.wait_maildir("right", 1)
    assert_no_mail(srv, "wrong")


@test("enhanced code of the wrong class, (reject 550 \"4.7.1 x\") or (defer 450 \"5.7.1 x\"): 451 4.3.0, logged")
def _():
    srv = policy_server("""
(rule rcpt "mismatch"
  (lambda (s rcpt)
    (cond ((string-prefix? "r@" rcpt) (reject 550 "4.7.1 Mixed up"))
          ((string-prefix? "d@" rcpt) (defer 450 "5.7.1 Mixed up"))
          ((string-prefix? "long@" rcpt) (reject 550 (make-string 600 #\\x)))
          ((string-prefix? "crlf@" rcpt) (reject 550 "5.7.1 two\\r\\nlines"))
          (else (next)))))
""")
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    cmd_line(c, "RCPT TO:<r@example.test>", FAILURE)
    srv.wait_log(r"policy error.*4\.7\.1")
    cmd_line(c, "RCPT TO:<d@example.test>", FAILURE)
    srv.wait_log(r"policy error.*5\.7\.1")
    cmd_line(c, "RCPT TO:<long@example.test>", FAILURE)
    srv.wait_log(r"policy error.*500 bytes")
    cmd_line(c, "RCPT TO:<crlf@example.test>", FAILURE)
    srv.wait_log(r"policy error.*(CR|LF)")
    c.send_expect("NOOP", 250)


# ---------------------------------------------------------------------------
# Broken rules

BROKEN_TEXT = BASE + """
(rule rcpt "exploding"
  (lambda (s rcpt)
    (if (string-prefix? "boom@" rcpt) (error "kaboom from the rule") (next))))
(rule rcpt "returns 42"
  (lambda (s rcpt) (if (string-prefix? "num@" rcpt) 42 (next))))
(rule rcpt "returns next itself"
  (lambda (s rcpt) (if (string-prefix? "proc@" rcpt) next (next))))
(rule data "broken data rule"
  (lambda (s msg)
    (if (pair? (header-ref msg "X-Break")) (car '()) (next))))
"""


@test("rule raising an error: 451 4.3.0 Temporary policy failure, log names the rule and FILE:LINE")
def _():
    srv = Server(config_text=BROKEN_TEXT).start()
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    cmd_line(c, "RCPT TO:<boom@example.test>", FAILURE)
    where = "%s:%d" % (srv.config, line_of(BROKEN_TEXT, '(rule rcpt "exploding"'))
    line = srv.wait_log(r"policy error: rule \"exploding\" .*")[0]
    assert line.startswith('policy error: rule "exploding" (rcpt, %s) failed: ' % where), line
    assert_in("kaboom from the rule", line, "log line")
    # The session continues: a later valid transaction is delivered.
    c.send_expect("RCPT TO:<after@example.test>", 250)
    c.send_expect("DATA", 354)
    c.send(stuff(MSG))
    qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
    check_delivered(delivered_one(srv, "after", qid), SENDER, "after@example.test", HELO,
                    "127.0.0.1", qid, ["after@example.test"], MSG)
    assert_no_mail(srv, "boom")


@test("rule returning a non-verdict (42, the procedure next): 451 4.3.0, log says not a verdict")
def _():
    srv = Server(config_text=BROKEN_TEXT).start()
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    cmd_line(c, "RCPT TO:<num@example.test>", FAILURE)
    where = "%s:%d" % (srv.config, line_of(BROKEN_TEXT, '(rule rcpt "returns 42"'))
    srv.wait_log(re.escape('policy error: rule "returns 42" (rcpt, %s) returned 42, not a verdict'
                           % where))
    cmd_line(c, "RCPT TO:<proc@example.test>", FAILURE)
    srv.wait_log(r'policy error: rule "returns next itself" \(rcpt, .*\) returned #<procedure next.*'
                 r'not a verdict')
    c.send_expect("RSET", 250)
    qid = deliver_marker(c, srv, "later")
    assert_no_mail(srv, "num", "proc")


@test("a data rule that fails: 451 4.3.0, the message is never delivered, the next one is")
def _():
    srv = Server(config_text=BROKEN_TEXT).start()
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    c.send_expect("RCPT TO:<victim@example.test>", 250)
    c.send_expect("DATA", 354)
    c.send(stuff(b"X-Break: yes\r\n" + MSG))
    expect_line(c, FAILURE)
    line = srv.wait_log(r"[0-9A-Za-z]+: policy error: rule \"broken data rule\" \(data, .*")[0]
    assert_in("%s:%d" % (srv.config, line_of(BROKEN_TEXT, '(rule data "broken data rule"')), line,
              "log line")
    # The transaction is over: RCPT needs a new MAIL.
    c.send_expect("RCPT TO:<victim@example.test>", 503, "5.5.1")
    deliver_marker(c, srv)
    assert_no_mail(srv, "victim")
    assert_equal(srv.spool_files("queue"), [], "spool/queue")
    assert "to=<victim@example.test>" not in srv.log_text(), srv.log_text()


@test("connect and helo rules that fail: 451 4.3.0 (connect: then closed; helo: session goes on)")
def _():
    srv = start_unprobed(policy_server("""
(rule connect "broken connect"
  (lambda (s) (if (string=? (client-address s) "127.0.0.1") (vector-ref (vector) 3) (next))))
(rule helo "broken helo"
  (lambda (s name) (if (string=? name "boom.example") (error "helo boom") (next))))
""", start=False))
    c = srv.connect(greet=False)
    expect_line(c, FAILURE)
    assert c.closed_by_server(), "the connection stayed open after a failed connect rule"
    srv.wait_log(r'policy error: rule "broken connect" \(connect, .*\) failed')
    if not srv.ipv6:
        return
    c6 = srv.connect(ipv6=True)
    cmd_line(c6, "EHLO boom.example", FAILURE)
    srv.wait_log(r'policy error: rule "broken helo" \(helo, .*\) failed: .*helo boom')
    c6.ehlo(HELO)
    transaction(c6, ["six@example.test"])
    srv.wait_maildir("six", 1)


# ---------------------------------------------------------------------------
# data

HEADER_RULES = """
(rule data "read headers"
  (lambda (s msg)
    (header-add! msg "X-Seen-Multi" (string-join (header-ref msg "x-MULTI") "|"))
    (header-add! msg "X-Seen-Subject" (string-join (header-ref msg "SUBJECT") "|"))
    (header-add! msg "X-Seen-Tab" (string-join (header-ref msg "x-tab") "|"))
    (header-add! msg "X-Removed" (number->string (header-remove! msg "x-remove-me")))
    (header-add! msg "X-Absent" (format #f "~s" (header-ref msg "X-Nothing")))
    (next)))
(rule data "add headers"
  (lambda (s msg)
    (header-add! msg "X-Top" "top value")
    (header-add! msg "X-Bottom" "bottom value" #:position 'bottom)
    (header-add! msg "X-After-Remove" (format #f "~s" (header-ref msg "X-Remove-Me")))
    (header-add! msg "X-Top-Seen" (string-join (header-ref msg "x-top") "|"))
    (next)))
"""

HEADER_MSG = (b"From: sender@origin.test\r\n"
              b"To: hdr@example.test\r\n"
              b"Subject: folded\r\n"
              b" continued here\r\n"
              b"X-Multi: one\r\n"
              b"X-Remove-Me: gone\r\n"
              b"x-multi: two\r\n"
              b"X-REMOVE-me: gone too\r\n"
              b"\tfolded too\r\n"
              b"X-Tab: a\r\n"
              b"\tb\r\n"
              b"\r\n"
              b"Body line\r\n"
              b"X-Multi: in the body\r\n"
              b"X-Remove-Me: in the body, not a header\r\n")

HEADER_EXPECTED = (b"X-Top-Seen: top value\r\n"
                   b"X-After-Remove: ()\r\n"
                   b"X-Top: top value\r\n"
                   b"X-Absent: ()\r\n"
                   b"X-Removed: 2\r\n"
                   b"X-Seen-Tab: a\tb\r\n"
                   b"X-Seen-Subject: folded continued here\r\n"
                   b"X-Seen-Multi: one|two\r\n"
                   b"From: sender@origin.test\r\n"
                   b"To: hdr@example.test\r\n"
                   b"Subject: folded\r\n"
                   b" continued here\r\n"
                   b"X-Multi: one\r\n"
                   b"x-multi: two\r\n"
                   b"X-Tab: a\r\n"
                   b"\tb\r\n"
                   b"X-Bottom: bottom value\r\n"
                   b"\r\n"
                   b"Body line\r\n"
                   b"X-Multi: in the body\r\n"
                   b"X-Remove-Me: in the body, not a header\r\n")


@test("data rule: header-add! top/bottom, header-remove!, header-ref (multiple, any case, unfolded): file byte for byte")
def _():
    srv = policy_server(HEADER_RULES)
    c = srv.connect()
    c.ehlo(HELO)
    qid = transaction(c, ["hdr@example.test"], HEADER_MSG)
    check_delivered(delivered_one(srv, "hdr", qid), SENDER, "hdr@example.test", HELO, "127.0.0.1",
                    qid, ["hdr@example.test"], HEADER_EXPECTED)


@test("data rule over BDAT: the same header edits, file byte for byte")
def _():
    srv = policy_server(HEADER_RULES)
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    c.send_expect("RCPT TO:<hdr@example.test>", 250)
    half = len(HEADER_MSG) // 2
    c.send(b"BDAT %d\r\n" % half + HEADER_MSG[:half])
    c.expect(250)
    c.send(b"BDAT %d LAST\r\n" % (len(HEADER_MSG) - half) + HEADER_MSG[half:])
    qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
    check_delivered(delivered_one(srv, "hdr", qid), SENDER, "hdr@example.test", HELO, "127.0.0.1",
                    qid, ["hdr@example.test"], HEADER_EXPECTED)


@test("header-add! bottom on a message with no body and no empty line; top on one with no header")
def _():
    srv = policy_server("""
(rule data "add"
  (lambda (s msg)
    (header-add! msg "X-Top" "t")
    (header-add! msg "X-Bottom" "b" #:position 'bottom)
    (next)))
""")
    c = srv.connect()
    c.ehlo(HELO)
    qid = transaction(c, ["nobody@example.test"], b"Subject: headers only\r\n")
    check_delivered(delivered_one(srv, "nobody", qid), SENDER, "nobody@example.test", HELO,
                    "127.0.0.1", qid, ["nobody@example.test"],
                    b"X-Top: t\r\nSubject: headers only\r\nX-Bottom: b\r\n")
    qid = transaction(c, ["nohead@example.test"], b"\r\njust a body\r\n")
    check_delivered(delivered_one(srv, "nohead", qid), SENDER, "nohead@example.test", HELO,
                    "127.0.0.1", qid, ["nohead@example.test"],
                    b"X-Top: t\r\nX-Bottom: b\r\n\r\njust a body\r\n")


@test("header-add! with an unfolded line break in the value does not inject a header or end the header section")
def _():
    srv = policy_server("""
(rule data "copy untrusted text into a header"
  (lambda (s msg)
    (header-add! msg "X-Note" (string-append "first" (string #\\newline) "Injected: yes"))
    (header-add! msg "X-Note2" (string-append "a" (string #\\newline #\\newline) "body?"))
    (next)))
""")
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    c.send_expect("RCPT TO:<inject@example.test>", 250)
    c.send_expect("DATA", 354)
    c.send(stuff(MSG))
    r = c.reply()
    if r.code == 451:
        assert_equal(r.last, FAILURE, "reply")    # refused loudly: fine
        return
    qid = queue_id(c.expect(250, "2.0.0 Ok: queued as", reply=r))
    content = delivered_one(srv, "inject", qid)
    heads = header_lines(content)
    injected = [l for l in heads if l.startswith(b"Injected:")]
    assert not injected, "header-add! created a header field 'Injected:' of its own:\n%r" % content
    assert any(l.startswith(b"Subject: policy") for l in heads), \
        "header-add! ended the header section early (Subject: now in the body):\n%r" % content


@test("header-add! with an invalid name, and a message object used after its stage: 451 4.3.0, not delivered")
def _():
    srv = policy_server("""
(rule data "bad name"
  (lambda (s msg)
    (when (pair? (header-ref msg "X-Bad-Name")) (header-add! msg "X Bad: Name" "v"))
    (next)))
(rule data "keeps the message"
  (lambda (s msg)
    (let ((old (session-ref s 'old)))
      (session-set! s 'old msg)
      (when (and old (pair? (header-ref msg "X-Use-Old"))) (header-ref old "Subject"))
      (next))))
""")
    c = srv.connect()
    c.ehlo(HELO)
    for header, needle in ((b"X-Bad-Name: 1\r\n", "invalid header name"),
                           (b"X-Use-Old: 1\r\n", "only valid while the rules of its stage run")):
        if header == b"X-Use-Old: 1\r\n":
            transaction(c, ["first@example.test"])           # leaves a message object behind
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        c.send_expect("RCPT TO:<bad@example.test>", 250)
        c.send_expect("DATA", 354)
        c.send(stuff(header + MSG))
        expect_line(c, FAILURE)
        srv.wait_log(r"policy error: rule .*%s" % re.escape(needle))
    deliver_marker(c, srv)
    assert_no_mail(srv, "bad")


@test("data rule reject: 5xx as given, nothing delivered, the next message is")
def _():
    srv = policy_server("""
(rule data "spam"
  (lambda (s msg)
    (if (pair? (header-ref msg "X-Spam")) (reject 554 "5.7.1 Spam refused") (next))))
""")
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    c.send_expect("RCPT TO:<spam@example.test>", 250)
    c.send_expect("DATA", 354)
    c.send(stuff(b"X-Spam: yes\r\n" + MSG))
    expect_line(c, "554 5.7.1 Spam refused")
    c.send_expect("RCPT TO:<spam@example.test>", 503, "5.5.1")    # transaction over
    qid = transaction(c, ["spam@example.test"])                 # same mailbox, no X-Spam
    content = delivered_one(srv, "spam", qid)
    check_delivered(content, SENDER, "spam@example.test", HELO, "127.0.0.1", qid,
                    ["spam@example.test"], MSG)
    srv.wait_log(r"%s: to=<spam@example.test>.*status=sent" % qid)
    time.sleep(0.2)
    assert_equal(len(srv.maildir_files("spam")), 1, "files in spam's Maildir")


@test("data rule defer: 4xx as given, nothing delivered")
def _():
    srv = policy_server("""
(rule data "later" (lambda (s msg) (defer 452 "4.3.1 Not now")))
""")
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    c.send_expect("RCPT TO:<later@example.test>", 250)
    c.send_expect("DATA", 354)
    c.send(stuff(MSG))
    expect_line(c, "452 4.3.1 Not now")
    c.send_expect("NOOP", 250)
    time.sleep(0.3)
    assert_no_mail(srv, "later")
    assert_equal(srv.spool_files("queue"), [], "spool/queue")


@test("data rule discard: 250 with a queue id, nothing delivered, log 'discarded by policy'")
def _():
    srv = policy_server("""
(rule data "drop"
  (lambda (s msg) (if (pair? (header-ref msg "X-Drop")) (discard) (next))))
""")
    c = srv.connect()
    c.ehlo(HELO)
    qid = transaction(c, ["dropped@example.test"], b"X-Drop: please\r\n" + MSG)
    srv.wait_log(r"%s: discarded by policy: client=\[127\.0\.0\.1\]:\d+, from=<%s>, size=\d+, nrcpt=1"
                 % (qid, re.escape(SENDER)))
    deliver_marker(c, srv)
    assert_no_mail(srv, "dropped")
    assert_not_delivered(srv, qid)


@test("discard decided at the rcpt stage drops the whole message, for every recipient")
def _():
    srv = policy_server("""
(rule rcpt "trap" (lambda (s rcpt) (if (string-prefix? "trap@" rcpt) (discard) (next))))
""")
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    cmd_line(c, "RCPT TO:<alice@example.test>", "250 2.1.5 Ok")
    cmd_line(c, "RCPT TO:<trap@example.test>", "250 2.1.5 Ok")
    c.send_expect("DATA", 354)
    c.send(stuff(MSG))
    qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
    srv.wait_log(r"%s: discarded by policy: .*nrcpt=2" % qid)
    # The next transaction on the connection is not discarded.
    deliver_marker(c, srv)
    assert_no_mail(srv, "alice", "trap")
    assert_not_delivered(srv, qid)


@test("discard at the mail stage drops that transaction only")
def _():
    srv = policy_server("""
(rule mail "drop sender"
  (lambda (s from) (if (string=? from "junk@origin.test") (discard) (next))))
""")
    c = srv.connect()
    c.ehlo(HELO)
    qid = transaction(c, ["dm@example.test"], sender="junk@origin.test")
    srv.wait_log(r"%s: discarded by policy" % qid)
    deliver_marker(c, srv)
    assert_no_mail(srv, "dm")


@test("discard of a recipient that a built-in check then refuses does not drop mail for the accepted ones")
def _():
    srv = policy_server("""
(rule rcpt "trap remote" (lambda (s rcpt) (if (string-suffix? "@elsewhere.test" rcpt) (discard) (next))))
""")
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    cmd_line(c, "RCPT TO:<x@elsewhere.test>", "554 5.7.1 <x@elsewhere.test>: Relay access denied")
    cmd_line(c, "RCPT TO:<kept@example.test>", "250 2.1.5 Ok")
    c.send_expect("DATA", 354)
    c.send(stuff(MSG))
    qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
    deliver_marker(c, srv)
    if not srv.maildir_files("kept"):
        dropped = re.findall(r"%s: discarded by policy.*" % qid, srv.log_text())
        raise AssertionError("the (discard) of the refused recipient x@elsewhere.test dropped the "
                             "message for the accepted kept@example.test: %r" % dropped)
    check_delivered(delivered_one(srv, "kept", qid), SENDER, "kept@example.test", HELO,
                    "127.0.0.1", qid, ["kept@example.test"], MSG)


@test("(discard) at the connect stage: the session's mail is accepted, then not delivered")
def _():
    srv = policy_server("""
(rule connect "drop this network"
  (lambda (s) (if (address-in? (client-address s) "127.0.0.0/8") (discard) (next))))
""")
    c = srv.connect()
    c.ehlo(HELO)
    qid = transaction(c, ["fromconnect@example.test"])
    time.sleep(0.3)
    assert not srv.maildir_files("fromconnect"), \
        "the connect rule said (discard), yet %s was delivered:\n%s" % (qid, srv.log_text())


@test("(discard) at the helo stage: the session's mail is accepted, then not delivered")
def _():
    srv = policy_server("""
(rule helo "drop this client" (lambda (s name) (if (string=? name "drop.example") (discard) (next))))
""")
    c = srv.connect()
    c.send_expect("EHLO drop.example", 250)
    qid = transaction(c, ["fromhelo@example.test"])
    c2 = srv.connect()                    # another client, another name: delivered
    c2.ehlo(HELO)
    deliver_marker(c2, srv)
    time.sleep(0.1)
    assert not srv.maildir_files("fromhelo"), \
        "the helo rule said (discard), yet %s was delivered:\n%s" % (qid, srv.log_text())


# ---------------------------------------------------------------------------
# Session variables and data-stage facts

SESSION_RULES = """
(rule connect "init"
  (lambda (s)
    (if (session-ref s 'mails)
        (reject 554 "5.7.1 leaked session variables")
        (begin (session-set! s 'port (client-port s)) (session-set! s 'mails 0) (next)))))
(rule helo "remember" (lambda (s name) (session-set! s 'helo-seen name) (next)))
(rule mail "count" (lambda (s from) (session-set! s 'mails (1+ (session-ref s 'mails))) (next)))
(rule rcpt "report"
  (lambda (s rcpt)
    (if (string-prefix? "report@" rcpt)
        (reject 550 (format #f "5.7.1 port=~a mails=~a helo=~a default=~a missing=~a"
                            (session-ref s 'port) (session-ref s 'mails)
                            (session-ref s 'helo-seen) (session-ref s 'nothing 'dflt)
                            (session-ref s 'nothing)))
        (next))))
(rule data "stamp"
  (lambda (s msg)
    (header-add! msg "X-Mails" (number->string (session-ref s 'mails)))
    (next)))
"""


@test("session-set!/session-ref: kept across stages and transactions of one connection, not shared between connections")
def _():
    srv = policy_server(SESSION_RULES)
    c1 = srv.connect()
    p1 = c1.sock.getsockname()[1]
    c1.ehlo("one.example")
    c1.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    cmd_line(c1, "RCPT TO:<report@example.test>",
             "550 5.7.1 port=%d mails=1 helo=one.example default=dflt missing=#f" % p1)
    c1.send_expect("RCPT TO:<sv@example.test>", 250)
    c1.send_expect("DATA", 354)
    c1.send(stuff(MSG))
    qid = queue_id(c1.expect(250, "2.0.0 Ok: queued as"))
    check_delivered(delivered_one(srv, "sv", qid), SENDER, "sv@example.test", "one.example",
                    "127.0.0.1", qid, ["sv@example.test"], b"X-Mails: 1\r\n" + MSG)
    c1.send_expect("MAIL FROM:<%s>" % SENDER, 250)        # second transaction
    cmd_line(c1, "RCPT TO:<report@example.test>",
             "550 5.7.1 port=%d mails=2 helo=one.example default=dflt missing=#f" % p1)
    # A second connection, while the first is open: its own variables.
    c2 = srv.connect()
    p2 = c2.sock.getsockname()[1]
    c2.ehlo("two.example")
    c2.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    cmd_line(c2, "RCPT TO:<report@example.test>",
             "550 5.7.1 port=%d mails=1 helo=two.example default=dflt missing=#f" % p2)
    # ... and the first connection's did not move.
    c1.send_expect("RSET", 250)
    c1.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    cmd_line(c1, "RCPT TO:<report@example.test>",
             "550 5.7.1 port=%d mails=3 helo=one.example default=dflt missing=#f" % p1)
    c1.send_expect("QUIT", 221)
    c2.send_expect("QUIT", 221)
    # Closed sessions leave nothing behind for later ones (the connect rule
    # refuses a session that already has variables).
    for i in range(6):
        c = srv.connect()
        c.ehlo("later%d.example" % i)
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        cmd_line(c, "RCPT TO:<report@example.test>",
                 "550 5.7.1 port=%d mails=1 helo=later%d.example default=dflt missing=#f"
                 % (c.sock.getsockname()[1], i))
        c.send_expect("QUIT", 221)
        c.closed_by_server()
        c.close()


DATA_FACTS = """
(rule rcpt "before data"
  (lambda (s rcpt)
    (if (string-prefix? "report@" rcpt)
        (reject 550 (format #f "5.7.1 queue-id=~s size=~s" (queue-id s) (message-size s)))
        (next))))
(rule data "facts"
  (lambda (s msg)
    (log-message s "data facts: id=~a size=~a" (queue-id s) (message-size s))
    (header-add! msg "X-Queue-Id" (queue-id s))
    (header-add! msg "X-Size" (number->string (message-size s)))
    (next)))
"""


@test("queue-id and message-size in the data stage: the 250 reply's id and the message's size")
def _():
    srv = policy_server(DATA_FACTS)
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    cmd_line(c, "RCPT TO:<report@example.test>", "550 5.7.1 queue-id=#f size=#f")
    c.send_expect("RCPT TO:<facts@example.test>", 250)
    c.send_expect("DATA", 354)
    c.send(stuff(MSG))
    qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
    size = len(MSG)
    srv.wait_log(r"%s: data facts: id=%s size=%d\n" % (qid, qid, size))
    check_delivered(delivered_one(srv, "facts", qid), SENDER, "facts@example.test", HELO,
                    "127.0.0.1", qid, ["facts@example.test"],
                    b"X-Size: %d\r\nX-Queue-Id: %s\r\n" % (size, qid.encode()) + MSG)
    srv.wait_log(r"%s: client=\[127\.0\.0\.1\]:\d+, .*size=%d, nrcpt=1" % (qid, size))


@test("message-size is the message's size, not its dot-stuffed transfer form (RFC 1870), DATA and BDAT alike")
def _():
    srv = policy_server(DATA_FACTS)
    c = srv.connect()
    c.ehlo(HELO)
    msg = b"Subject: dots\r\n\r\n.one leading dot\r\n..two\r\n.\r\nend\r\n"
    data_qid = transaction(c, ["dots@example.test"], msg)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    c.send_expect("RCPT TO:<dots@example.test>", 250)
    c.send(b"BDAT %d LAST\r\n" % len(msg) + msg)
    bdat_qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
    sizes = {}
    for name, qid in (("DATA", data_qid), ("BDAT", bdat_qid)):
        sizes[name] = int(srv.wait_log(r"%s: data facts: id=%s size=(\d+)" % (qid, qid))[0])
    assert_equal(sizes, {"DATA": len(msg), "BDAT": len(msg)},
                 "message-size of the same %d-byte message sent with DATA and with BDAT" % len(msg))


@test("log-message writes a line with the queue id in the data stage, without one before")
def _():
    srv = policy_server("""
(rule mail "log sender" (lambda (s from) (log-message s "mail stage says ~a" from) (next)))
(rule data "log" (lambda (s msg) (log-message s "hello ~a, ~s" "world" (length (recipients s))) (next)))
""")
    c = srv.connect()
    c.ehlo(HELO)
    qid = transaction(c, ["logged@example.test"])
    srv.wait_log(r"guillemot\[\d+\]: %s: hello world, 1\n" % qid)
    srv.wait_log(r"guillemot\[\d+\]: mail stage says %s\n" % re.escape(SENDER))


# ---------------------------------------------------------------------------
# check-config

def check_config(text):
    d = make_tempdir()
    path = os.path.join(d, "policy.scm")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path, run_guillemot("check-config", "-c", path)


@test("check-config: (rule nosuch ...) exits 1 with FILE:LINE:COLUMN: rule: unknown stage nosuch")
def _():
    text = BASE + '\n(rule nosuch "x" (lambda (s) (next)))\n'
    path, p = check_config(text)
    assert_equal(p.returncode, 1, "exit status (stdout %r, stderr %r)" % (p.stdout, p.stderr))
    line = line_of(text, "(rule nosuch")
    assert_equal(p.stderr, "%s:%d:1: rule: unknown stage nosuch (known: connect, helo, auth, mail, rcpt, data, queued, delivery)\n"
                 % (path, line), "stderr")


@test("check-config: an rcpt rule with a 1-argument lambda exits 1 naming the rule")
def _():
    text = BASE + '\n(rule rcpt "one argument only" (lambda (s) (next)))\n'
    path, p = check_config(text)
    assert_equal(p.returncode, 1, "exit status (stdout %r, stderr %r)" % (p.stdout, p.stderr))
    assert re.match(r"^%s:%d:\d+: rule rcpt \"one argument only\": the procedure must take 2 arguments"
                    % (re.escape(path), line_of(text, "(rule rcpt")), p.stderr), p.stderr
    # The same for a connect rule given two arguments.
    text = BASE + '(rule connect "two" (lambda (s x) (next)))\n'
    path, p = check_config(text)
    assert_equal(p.returncode, 1, "exit status (stderr %r)" % p.stderr)
    assert_in('rule connect "two": the procedure must take 1 argument (session)', p.stderr, "stderr")


@test("check-config: a literal (reject 450 ...) or (defer 550 ...) in a rule exits 1 naming the rule")
def _():
    for verdict, needs in (('(reject 450 "4.7.1 x")', "(reject 450 ...) needs a 5xx code"),
                           ('(defer 550 "5.7.1 x")', "(defer 550 ...) needs a 4xx code")):
        text = BASE + '(rule rcpt "literal" (lambda (s r) (if (string=? r "a@b") %s (next))))\n' % verdict
        path, p = check_config(text)
        assert_equal(p.returncode, 1, "exit status for %s (stderr %r)" % (verdict, p.stderr))
        assert re.match(r"^%s:%d:\d+: rule rcpt \"literal\": %s\n\Z"
                        % (re.escape(path), line_of(text, "(rule rcpt"), re.escape(needs)),
                        p.stderr), p.stderr


@test("check-config: a rule name that is not a string exits 1")
def _():
    for name in ("42", "'blocked"):
        text = BASE + '(rule rcpt %s (lambda (s r) (next)))\n' % name
        path, p = check_config(text)
        assert_equal(p.returncode, 1, "exit status for name %s (stderr %r)" % (name, p.stderr))
        assert re.match(r"^%s:%d:\d+: rule rcpt: the name must be a string, got "
                        % (re.escape(path), line_of(text, "(rule rcpt")), p.stderr), p.stderr


@test("check-config: a valid configuration with rules of every stage is valid (exit 0)")
def _():
    path, p = check_config(BASE + CONNECT_REJECT + HELO_RULES + HEADER_RULES + SESSION_RULES)
    assert_equal(p.returncode, 0, "exit status (stderr %r)" % p.stderr)
    assert_in("configuration is valid", p.stdout, "stdout")


run()
