"""(guillemot mime) end to end: data rules read the MIME parts of real
multipart messages built with Python's email package, through the real
server; the rule "reject executables" refuses a message with an .exe file
wherever it hides, and lets the others through byte for byte. Hostile
structures (deep nesting, thousands of parts, broken boundaries, a parse
made slow on purpose) get an answer quickly and a bounded part list."""

import sys
sys.dont_write_bytecode = True     # no __pycache__ in the source tree

import email.encoders
import os
import re
import time
from email.message import EmailMessage
from email.mime.application import MIMEApplication
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

from harness import (assert_equal, assert_in, check_delivered, expect_line, HOSTNAME, queue_id,
                     read_file, run, Server, stuff, test)

HELO = "client.example.test"
SENDER = "sender@origin.test"
REJECTED = "554 5.7.1 Executable attachments are not accepted"

BASE = """\
(use-modules (guillemot) (guillemot mime) (srfi srfi-1) (rnrs bytevectors))
(define-server #:hostname "mx.example.test")
(local-domains "example.test" "localhost")
(deliver-local (maildir "mail/~a/Maildir"))
"""

# The recipe of the manual (doc/mime.texi), as the tests use it.
REJECT_EXECUTABLES = """
(rule data "reject executables"
  (lambda (s msg)
    (if (any (lambda (name) (string-suffix-ci? ".exe" name))
             (attachment-filenames msg))
        (reject 554 "5.7.1 Executable attachments are not accepted")
        (next))))
"""

# Logs what a data rule sees: one line per part (for small messages), then a
# summary line.
DESCRIBE = """
(rule data "describe"
  (lambda (s msg)
    (let ((parts (message-parts msg)))
      (when (<= (length parts) 20)
        (for-each
         (lambda (p)
           (log-message s "part type=~s charset=~s filename=~s names=~s disposition=~s size=~a attachment=~a"
                        (part-content-type p) (part-charset p) (part-filename p)
                        (part-filenames p) (part-disposition p) (part-size p)
                        (part-attachment? p)))
         parts))
      (log-message s "parts n=~a truncated=~a" (length parts) (message-parts-truncated? msg)))
    (next)))
"""


def mime_server(rules, **kw):
    srv = Server(config_text=BASE + rules, **kw)
    srv.start()
    return srv


def send_data(c, rcpt, body):
    """MAIL, RCPT, DATA and the message: returns the reply to the message."""
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    c.send_expect("RCPT TO:<%s>" % rcpt, 250)
    c.send_expect("DATA", 354)
    c.send(stuff(body))
    return c.reply()


def transaction(c, rcpt, body):
    return queue_id(c.expect(250, "2.0.0 Ok: queued as", send_data(c, rcpt, body)))


def deliver_marker(c, srv, local="marker"):
    """Deliver one plain message and wait for it: what the server was going
    to do with earlier messages is done by then (one queue, in order)."""
    qid = transaction(c, "%s@example.test" % local, b"Subject: marker\r\n\r\nmarker\r\n")
    srv.wait_maildir(local, 1)
    srv.wait_log(r"%s: to=<%s@example.test>.*status=sent" % (qid, local))
    return qid


def assert_no_mail(srv, *locals_):
    for local in locals_:
        files = srv.maildir_files(local)
        assert not files, "mail was delivered to %s: %r" % (local, files)


def wire(msg):
    """MSG (an email.message.Message) as bytes with CRLF line ends."""
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


EXE_BYTES = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + bytes(range(256)) * 4
PDF_BYTES = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n"


def with_attachment(data, maintype, subtype, filename, subject="attachment"):
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = "rcpt@example.test"
    msg["Subject"] = subject
    msg.set_content("Please find the file attached.\n")
    msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg


# ---------------------------------------------------------------------------
# Reject executables

@test("a base64 .exe attachment: 554 5.7.1, nothing delivered; the next message is")
def _():
    srv = mime_server(DESCRIBE + REJECT_EXECUTABLES)
    c = srv.connect()
    c.ehlo(HELO)
    msg = with_attachment(EXE_BYTES, "application", "x-msdownload", "setup.exe")
    assert_in(b"Content-Transfer-Encoding: base64", wire(msg), "the message")
    r = send_data(c, "victim@example.test", wire(msg))
    assert_equal(r.last, REJECTED, "reply to the message")
    line = srv.wait_log(r'part type="application/x-msdownload".*')[0]
    assert_equal(line, 'part type="application/x-msdownload" charset=#f filename="setup.exe" '
                 'names=("setup.exe") disposition="attachment" size=%d attachment=#t'
                 % len(EXE_BYTES), "the .exe part as the rule sees it")
    srv.wait_log(r'part type="text/plain" charset="utf-8" filename=#f names=\(\) '
                 r'disposition=#f size=\d+ attachment=#f')
    srv.wait_log(r"parts n=2 truncated=#f")
    deliver_marker(c, srv)
    assert_no_mail(srv, "victim")


@test("an .EXE inside an attached message (message/rfc822): refused")
def _():
    srv = mime_server(DESCRIBE + REJECT_EXECUTABLES)
    c = srv.connect()
    c.ehlo(HELO)
    inner = with_attachment(EXE_BYTES, "application", "octet-stream", "INVOICE.EXE",
                            subject="inner")
    outer = EmailMessage()
    outer["From"] = SENDER
    outer["Subject"] = "forwarded"
    outer.set_content("See the forwarded message.\n")
    outer.add_attachment(inner)                   # message/rfc822
    assert_in(b"Content-Type: message/rfc822", wire(outer), "the message")
    r = send_data(c, "victim@example.test", wire(outer))
    assert_equal(r.last, REJECTED, "reply to the message")
    srv.wait_log(r'part type="application/octet-stream" charset=#f filename="INVOICE.EXE"')
    srv.wait_log(r"parts n=3 truncated=#f")      # outer text, inner text, inner file
    deliver_marker(c, srv)
    assert_no_mail(srv, "victim")


@test("an RFC 2231 file name (filename*=UTF-8''evil%2Eexe): decoded, refused")
def _():
    srv = mime_server(DESCRIBE + REJECT_EXECUTABLES)
    c = srv.connect()
    c.ehlo(HELO)
    outer = MIMEMultipart()
    outer["Subject"] = "rfc 2231"
    outer.attach(MIMEText("Hello.\n"))
    part = MIMEApplication(EXE_BYTES, "octet-stream")
    part["Content-Disposition"] = "attachment; filename*=UTF-8''evil%2Eexe"
    outer.attach(part)
    body = wire(outer)
    assert_in(b"filename*=UTF-8''evil%2Eexe", body, "the message")
    r = send_data(c, "victim@example.test", body)
    assert_equal(r.last, REJECTED, "reply to the message")
    srv.wait_log(r'part type="application/octet-stream" charset=#f filename="evil.exe"')
    deliver_marker(c, srv)
    assert_no_mail(srv, "victim")


@test("two names (filename=\"a.pdf\", name=\"a.exe\"): attachment-filenames has both, refused")
def _():
    srv = mime_server(DESCRIBE + REJECT_EXECUTABLES)
    c = srv.connect()
    c.ehlo(HELO)
    outer = MIMEMultipart()
    outer["Subject"] = "two names"
    outer.attach(MIMEText("Hello.\n"))
    part = MIMEBase("application", "pdf", name="a.exe")
    part.set_payload(EXE_BYTES)
    email.encoders.encode_base64(part)
    part["Content-Disposition"] = 'attachment; filename="a.pdf"'
    outer.attach(part)
    r = send_data(c, "victim@example.test", wire(outer))
    assert_equal(r.last, REJECTED, "reply to the message")
    srv.wait_log(r'part type="application/pdf" charset=#f filename="a.pdf" names=\("a.pdf" "a.exe"\)')
    deliver_marker(c, srv)
    assert_no_mail(srv, "victim")


@test("a .pdf attachment: accepted, delivered byte for byte")
def _():
    srv = mime_server(DESCRIBE + REJECT_EXECUTABLES)
    c = srv.connect()
    c.ehlo(HELO)
    msg = with_attachment(PDF_BYTES, "application", "pdf", "report.pdf")
    body = wire(msg)
    qid = transaction(c, "rcpt@example.test", body)
    files = srv.wait_maildir("rcpt", 1)
    check_delivered(read_file(files[0]), SENDER, "rcpt@example.test", HELO, "127.0.0.1", qid,
                    ["rcpt@example.test"], body)
    line = srv.wait_log(r'part type="application/pdf".*')[0]
    assert_equal(line, 'part type="application/pdf" charset=#f filename="report.pdf" '
                 'names=("report.pdf") disposition="attachment" size=%d attachment=#t'
                 % len(PDF_BYTES), "the .pdf part as the rule sees it")


def manual_recipe():
    """The "Reject executables" recipe of doc/mime.texi, as Scheme text."""
    from harness import TOP_SRCDIR
    with open(os.path.join(TOP_SRCDIR, "doc", "mime.texi"), encoding="utf-8") as f:
        texi = f.read()
    m = re.search(r"@subsubheading Reject executables\n.*?@lisp\n(.*?)@end lisp", texi, re.S)
    assert m, "no recipe under '@subsubheading Reject executables' in doc/mime.texi"
    text = re.sub(r"@r\{([^}]*)\}", r"\1", m.group(1))
    return text.replace("@{", "{").replace("@}", "}").replace("@@", "@")


@test("the manual's recipe: .exe, .Scr and 'evil.exe.' refused, too deep refused, .pdf delivered")
def _():
    srv = mime_server(manual_recipe())
    c = srv.connect()
    c.ehlo(HELO)
    for name in ("setup.exe", "screen.Scr", "evil.exe. "):
        msg = with_attachment(EXE_BYTES, "application", "octet-stream", name)
        assert_equal(send_data(c, "victim@example.test", wire(msg)).last, REJECTED, name)
    r = send_data(c, "victim@example.test", nested(30))
    assert_equal(r.last, "554 5.7.1 Message structure too complex to check", "30 levels deep")
    msg = with_attachment(PDF_BYTES, "application", "pdf", "report.pdf")
    qid = transaction(c, "rcpt@example.test", wire(msg))
    files = srv.wait_maildir("rcpt", 1)
    check_delivered(read_file(files[0]), SENDER, "rcpt@example.test", HELO, "127.0.0.1", qid,
                    ["rcpt@example.test"], wire(msg))
    assert_no_mail(srv, "victim")


# ---------------------------------------------------------------------------
# Reading parts

@test("part-text decodes a quoted-printable ISO-8859-1 text part; part-body of base64 is the bytes")
def _():
    srv = mime_server("""
(define (hex bv)
  (string-concatenate
   (map (lambda (b) (string-pad (number->string b 16) 2 #\\0)) (bytevector->u8-list bv))))
(rule data "read"
  (lambda (s msg)
    (for-each
     (lambda (p)
       (if (string-prefix? "text/" (part-content-type p))
           (log-message s "text charset=~a codes=~a" (part-charset p)
                        (map char->integer (string->list (part-text p))))
           (log-message s "body size=~a hex=~a" (part-size p) (hex (part-body p)))))
     (message-parts msg))
    (next)))
""")
    c = srv.connect()
    c.ehlo(HELO)
    text = "Grüße aus Köln, café crème à 3 EUR\n"
    outer = MIMEMultipart()
    outer["Subject"] = "qp"
    t = MIMEText(text, "plain", "iso-8859-1")
    del t["Content-Transfer-Encoding"]
    t.set_payload(__import__("quopri").encodestring(text.encode("iso-8859-1")).decode("ascii"))
    t["Content-Transfer-Encoding"] = "quoted-printable"
    outer.attach(t)
    data = bytes(range(256)) + os.urandom(300)
    outer.attach(MIMEApplication(data, "octet-stream"))
    body = wire(outer)
    assert_in(b"Gr=FC=DFe", body, "the message (quoted-printable)")
    qid = transaction(c, "rcpt@example.test", body)
    line = srv.wait_log(r"%s: text charset=.*" % qid)[0]
    expected = [ord(ch) for ch in text]
    assert_equal(line, "%s: text charset=iso-8859-1 codes=(%s)"
                 % (qid, " ".join(str(n) for n in expected)), "the decoded text")
    hexline = srv.wait_log(r"%s: body size=.*" % qid)[0]
    assert_equal(hexline, "%s: body size=%d hex=%s" % (qid, len(data), data.hex()),
                 "the decoded base64 part")


@test("a plain message without MIME: one part, text/plain, no charset, no file name")
def _():
    srv = mime_server(DESCRIBE)
    c = srv.connect()
    c.ehlo(HELO)
    body = b"From: sender@origin.test\r\nSubject: plain\r\n\r\nJust text.\r\nTwo lines.\r\n"
    qid = transaction(c, "rcpt@example.test", body)
    line = srv.wait_log(r"%s: part .*" % qid)[0]
    assert_equal(line, '%s: part type="text/plain" charset=#f filename=#f names=() disposition=#f '
                 'size=%d attachment=#f' % (qid, len(b"Just text.\nTwo lines.\n")), "the one part")
    srv.wait_log(r"%s: parts n=1 truncated=#f" % qid)


@test("the parse follows the message: after header-set! of Content-Type the parts change; "
      "earlier parts still read their bodies")
def _():
    srv = mime_server("""
(rule data "change"
  (lambda (s msg)
    (let* ((before (message-parts msg))
           (same (eq? (vector-ref ((@ (guillemot core) %mime-parts) msg) 0)
                      (vector-ref ((@ (guillemot core) %mime-parts) msg) 0))))
      (header-set! msg "Content-Type" "text/plain")
      (let ((after (message-parts msg)))
        (log-message s "cached=~a before=~a after=~a first-body=~a"
                     same (length before) (length after)
                     (bytevector-length (part-body (cadr before))))))
    (next)))
""")
    c = srv.connect()
    c.ehlo(HELO)
    msg = with_attachment(PDF_BYTES, "application", "pdf", "report.pdf")
    qid = transaction(c, "rcpt@example.test", wire(msg))
    srv.wait_log(r"%s: cached=#t before=2 after=1 first-body=%d\n" % (qid, len(PDF_BYTES)))


@test("a rule that pauses between message-parts and part-body: the parts still read")
def _():
    srv = mime_server("""
(rule data "pause"
  (lambda (s msg)
    (let ((parts (message-parts msg)))
      (pause 0.2)
      (log-message s "after pause: n=~a sizes=~a again=~s" (length parts)
                   (map (lambda (p) (bytevector-length (part-body p))) parts)
                   (map part-filename (message-parts msg))))
    (next)))
""")
    c = srv.connect()
    c.ehlo(HELO)
    msg = with_attachment(PDF_BYTES, "application", "pdf", "report.pdf")
    qid = transaction(c, "rcpt@example.test", wire(msg))
    srv.wait_log(r'%s: after pause: n=2 sizes=\(\d+ %d\) again=\(#f "report.pdf"\)\n'
                 % (qid, len(PDF_BYTES)))


@test("a part kept past its data stage: part-body fails (451 4.3.0, the log says why)")
def _():
    srv = mime_server("""
(rule data "keep"
  (lambda (s msg)
    (let ((old (session-ref s 'part)))
      (session-set! s 'part (car (message-parts msg)))
      (when old (part-body old))
      (next))))
""")
    c = srv.connect()
    c.ehlo(HELO)
    transaction(c, "rcpt@example.test", b"Subject: one\r\n\r\none\r\n")
    r = send_data(c, "rcpt@example.test", b"Subject: two\r\n\r\ntwo\r\n")
    assert_equal(r.last, "451 4.3.0 Temporary policy failure", "reply to the second message")
    srv.wait_log(r'policy error: rule "keep" \(data, .*the message is only valid while the rules of '
                 r'its stage run')


# ---------------------------------------------------------------------------
# Hostile structures

def nested(levels):
    """Multiparts nested LEVELS deep, an .exe at the bottom."""
    lines = ["Subject: deep", "MIME-Version: 1.0"]
    for i in range(levels):
        lines += ['Content-Type: multipart/mixed; boundary="b%d"' % i, "", "--b%d" % i]
    lines += ["Content-Type: application/octet-stream; name=deep.exe", "", "MZ"]
    for i in reversed(range(levels)):
        lines += ["--b%d--" % i]
    return ("\r\n".join(lines) + "\r\n").encode()


def many_parts(n):
    lines = ["Subject: many", "MIME-Version: 1.0", 'Content-Type: multipart/mixed; boundary="z"', ""]
    for i in range(n):
        lines += ["--z", "Content-Type: text/plain; name=f%d.txt" % i, "", "part %d" % i]
    lines += ["--z--"]
    return ("\r\n".join(lines) + "\r\n").encode()


BROKEN = b"""Subject: broken\r
MIME-Version: 1.0\r
Content-Type: multipart/mixed; boundary="outer"\r
\r
preamble\r
--outer\r
Content-Type: multipart/alternative; boundary="outer"\r
\r
--outer\r
Content-Type: text/plain\r
\r
same boundary as the parent\r
--inner--\r
--outer\r
Content-Type: multipart/related\r
\r
no boundary parameter at all\r
--outer\r
Content-Type: message/rfc822\r
\r
Content-Type: multipart/mixed; boundary=never\r
\r
the boundary never comes\r
--outer\r
Content-Type: application/octet-stream; name="x.bin"\r
Content-Transfer-Encoding: base64\r
\r
!!!! not base64 at all ====\r
"""


def slow():
    """1024 nested multiparts, then many lines that look like boundaries:
    without a time budget, GMime compares each line with every open one."""
    head = "".join('Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
                   for i in range(1024))
    return ("Subject: slow\r\n" + head + "Content-Type: text/plain\r\n\r\n").encode() \
        + b"--x\r\n" * 1000000


HOSTILE_RULES = DESCRIBE + REJECT_EXECUTABLES


@test("hostile: 100 levels of nesting, 5000 parts, broken boundaries: quick answers, bounded lists",
      timeout=60)
def _():
    srv = mime_server(HOSTILE_RULES)
    c = srv.connect(timeout=15)
    c.ehlo(HELO)
    for n, (name, body, check) in enumerate((
            ("deep", nested(100), r"parts n=0 truncated=too-deep"),
            ("many", many_parts(5000), r"parts n=1000 truncated=too-many-parts"),
            ("broken", BROKEN, r"parts n=\d+ truncated=#f"))):
        t0 = time.monotonic()
        r = send_data(c, "%s@example.test" % name, body)
        elapsed = time.monotonic() - t0
        assert r.code in (250, 554), "%s: unexpected reply %r" % (name, r)
        assert elapsed < 2.0, "%s: the answer took %.1fs" % (name, elapsed)
        line = srv.wait_log(r"[0-9A-Za-z]+: (parts n=\d+ truncated=\S+)\n", count=n + 1)[n]
        assert re.match(check, line), "%s: %r does not match %r" % (name, line, check)
    # The broken message was read: its parts are listed and decoding bad
    # base64 does not fail.
    srv.wait_log(r'part type="application/octet-stream" charset=#f filename="x.bin"')
    deliver_marker(c, srv)
    assert srv.proc.poll() is None, "the server died"


@test("hostile: a parse made slow on purpose stops at the time budget (truncated=too-slow)",
      timeout=60)
def _():
    srv = mime_server(HOSTILE_RULES + """
(rule data "refuse what could not be read"
  (lambda (s msg)
    (if (message-parts-truncated? msg)
        (reject 554 "5.7.1 Message structure too complex")
        (next))))
""", settings={"max-message-size": 20000000})
    c = srv.connect(timeout=15)
    c.ehlo(HELO)
    body = slow()
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    c.send_expect("RCPT TO:<slow@example.test>", 250)
    c.send_expect("DATA", 354)
    c.send(stuff(body)[:-5])
    t0 = time.monotonic()
    c.send(b"\r\n.\r\n")
    r = c.reply()
    elapsed = time.monotonic() - t0
    assert_equal(r.last, "554 5.7.1 Message structure too complex", "reply")
    assert elapsed < 3.0, "the answer took %.1fs" % elapsed
    srv.wait_log(r"parts n=0 truncated=too-slow")
    deliver_marker(c, srv)


run()
