"""Python's smtplib against the real server: recipients, messages per
connection, 8BITMIME, SMTPUTF8, IPv4 and IPv6, HELO; Maildir content checked
byte for byte."""

import sys
sys.dont_write_bytecode = True     # no __pycache__ in the source tree

import os
import re

from harness import (HOSTNAME, Server, assert_equal, assert_in, check_delivered,
                     ipv6_available, queue_id, read_file, run, skip, test)

HELO = "client.example.test"


def send(s, sender, rcpts, msg, mail_options=()):
    """sendmail's steps one by one, so that the 250 reply (and its queue id) is seen."""
    code, resp = s.mail(sender, list(mail_options))
    assert code == 250, (code, resp)
    for r in rcpts:
        code, resp = s.rcpt(r)
        assert code == 250, (r, code, resp)
    code, resp = s.data(msg)
    assert code == 250, (code, resp)
    return queue_id("%d %s" % (code, resp.decode("utf-8")))


def maildir_name_ok(path, qid, index):
    name = os.path.basename(path)
    m = re.match(r"^(\d+)\.([0-9A-Za-z]+)_R(\d+)\.(.+)$", name)
    assert m, "Maildir name %r is not ARRIVAL.ID_R<index>.HOSTNAME" % name
    assert_equal(m.group(2), qid, "queue id in Maildir name")
    assert_equal(int(m.group(3)), index, "recipient index in Maildir name")
    assert_equal(m.group(4), HOSTNAME, "host name in Maildir name")


@test("EHLO advertises the extensions, with SIZE = max-message-size")
def _():
    with Server(settings={"max-message-size": 123456}) as srv:
        s = srv.smtplib()
        code, resp = s.ehlo(HELO)
        assert_equal(code, 250, "EHLO code")
        lines = resp.decode().split("\n")
        assert_equal(lines[0], HOSTNAME, "first EHLO line")
        for ext in ["PIPELINING", "SIZE 123456", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES",
                    "CHUNKING"]:
            assert ext in lines, "%s missing from EHLO reply %r" % (ext, lines)
        assert_equal(s.noop()[0], 250, "NOOP")
        assert_equal(s.quit()[0], 221, "QUIT")


@test("three recipients in one message: one file each, byte for byte, no 'for' clause")
def _():
    with Server() as srv:
        s = srv.smtplib()
        s.ehlo(HELO)
        rcpts = ["alice@example.test", "Bob@example.test", "carol@localhost"]
        msg = (b"From: sender@origin.test\r\nTo: alice@example.test\r\nSubject: three\r\n\r\n"
               b"Hello all.\r\n.leading dot line\r\n..two dots\r\n\r\nlast line\r\n")
        qid = send(s, "sender@origin.test", rcpts, msg)
        s.quit()
        for index, (rcpt, local) in enumerate(zip(rcpts, ["alice", "bob", "carol"])):
            files = srv.wait_maildir(local, 1)
            maildir_name_ok(files[0], qid, index)
            check_delivered(read_file(files[0]), "sender@origin.test", rcpt, HELO, "127.0.0.1",
                            qid, rcpts, msg)
            assert_equal(os.listdir(os.path.join(srv.maildir(local), "tmp")), [], "Maildir tmp/")
            assert os.path.isdir(os.path.join(srv.maildir(local), "cur")), "Maildir cur/ missing"
        log = srv.wait_log(r"%s: to=<carol@localhost>, relay=maildir, .*status=sent" % qid)
        log = srv.log_text()
        assert_in("%s: client=[127.0.0.1]" % qid, log, "server log")
        assert_in("from=<sender@origin.test>", log, "server log")
        assert_in("nrcpt=3", log, "server log")


@test("several messages on one connection: distinct ids, one file each, 'for' clause")
def _():
    with Server() as srv:
        s = srv.smtplib()
        s.ehlo(HELO)
        ids = []
        msgs = []
        for i in range(4):
            msg = ("Subject: message %d\r\nMessage-Id: <%d@origin.test>\r\n\r\nbody %d\r\n"
                   % (i, i, i)).encode()
            msgs.append(msg)
            ids.append(send(s, "sender@origin.test", ["dave@example.test"], msg))
            assert_equal(s.rset()[0], 250, "RSET between messages")
        s.quit()
        assert_equal(len(set(ids)), 4, "number of distinct queue ids %r" % ids)
        assert_equal(sorted(ids), ids, "queue ids sort in arrival order")
        files = srv.wait_maildir("dave", 4, settle=0.3)
        by_id = {}
        for f in files:
            m = re.search(r"\.([0-9A-Za-z]+)_R0\.", os.path.basename(f))
            assert m, f
            by_id[m.group(1)] = f
        assert_equal(sorted(by_id), sorted(ids), "queue ids in Maildir names")
        for qid, msg in zip(ids, msgs):
            check_delivered(read_file(by_id[qid]), "sender@origin.test", "dave@example.test", HELO,
                            "127.0.0.1", qid, ["dave@example.test"], msg)
            assert_in(qid + ": client=[127.0.0.1]", srv.log_text(), "server log")


@test("8-bit body with BODY=8BITMIME is stored unchanged")
def _():
    with Server() as srv:
        s = srv.smtplib()
        s.ehlo(HELO)
        body = "Grüße aus Köln — ¡olé! ☃\r\n\xe9t\xe9 \r\n".encode("utf-8") + bytes(range(0x80, 0x100)) + b"\r\n"
        msg = (b"Subject: 8bit\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
               b"Content-Transfer-Encoding: 8bit\r\n\r\n" + body)
        qid = send(s, "sender@origin.test", ["erin@example.test"], msg, ["BODY=8BITMIME"])
        s.quit()
        f = srv.wait_maildir("erin", 1)[0]
        check_delivered(read_file(f), "sender@origin.test", "erin@example.test", HELO, "127.0.0.1",
                        qid, ["erin@example.test"], msg)


@test("SMTPUTF8: UTF-8 local parts for sender and recipient, protocol UTF8SMTP")
def _():
    with Server() as srv:
        s = srv.smtplib()
        s.ehlo(HELO)
        assert s.has_extn("smtputf8")
        sender = "andré@origin.test"
        rcpt = "jösé@example.test"
        msg = "Subject: utf-8\r\nFrom: André <andré@origin.test>\r\n\r\n¿Qué tal, José?\r\n".encode()
        qid = send(s, sender, [rcpt], msg, ["SMTPUTF8", "BODY=8BITMIME"])
        s.quit()
        files = srv.wait_maildir("jösé", 1)
        maildir_name_ok(files[0], qid, 0)
        check_delivered(read_file(files[0]), sender, rcpt, HELO, "127.0.0.1", qid, [rcpt], msg,
                        protocol="UTF8SMTP")


@test("sendmail() with SMTPUTF8 in mail_options delivers to a UTF-8 mailbox")
def _():
    with Server() as srv:
        s = srv.smtplib()
        refused = s.sendmail("jösé@example.test", ["jösé@example.test"], b"Subject: x\r\n\r\nhi\r\n",
                             mail_options=["SMTPUTF8"])
        assert_equal(refused, {}, "refused recipients")
        s.quit()
        content = read_file(srv.wait_maildir("jösé", 1)[0])
        assert content.startswith("Return-Path: <jösé@example.test>\nDelivered-To: jösé@example.test\n".encode()), content
        assert_in(b" with UTF8SMTP id ", content, "delivered message")


@test("IPv6 client: Received shows [IPv6:::1]")
def _():
    if not ipv6_available():
        skip("no IPv6 loopback")
    with Server() as srv:
        s = srv.smtplib(ipv6=True)
        s.ehlo(HELO)
        msg = b"Subject: over IPv6\r\n\r\nsix\r\n"
        qid = send(s, "sender@origin.test", ["frank@example.test"], msg)
        s.quit()
        f = srv.wait_maildir("frank", 1)[0]
        check_delivered(read_file(f), "sender@origin.test", "frank@example.test", HELO, "::1", qid,
                        ["frank@example.test"], msg)
        assert_in("%s: client=[::1]" % qid, srv.log_text(), "server log")


@test("IPv4 and IPv6 listeners both serve the same server")
def _():
    if not ipv6_available():
        skip("no IPv6 loopback")
    with Server() as srv:
        ids = []
        for v6 in (False, True):
            s = srv.smtplib(ipv6=v6)
            s.ehlo(HELO)
            ids.append(send(s, "sender@origin.test", ["gina@example.test"],
                            b"Subject: v6=%d\r\n\r\nx\r\n" % v6))
            s.quit()
        files = srv.wait_maildir("gina", 2)
        text = b"".join(read_file(f) for f in files)
        assert_in(b"([127.0.0.1])", text, "messages")
        assert_in(b"([IPv6:::1])", text, "messages")


@test("HELO (not EHLO): protocol SMTP, no ESMTP parameters allowed")
def _():
    with Server() as srv:
        s = srv.smtplib()
        code, _ = s.helo(HELO)
        assert_equal(code, 250, "HELO")
        # smtplib drops parameters after HELO: send the command by hand.
        code, resp = s.docmd("MAIL FROM:<sender@origin.test> BODY=8BITMIME")
        assert code == 555 and resp.startswith(b"5.5.4"), (code, resp)
        msg = b"Subject: helo\r\n\r\nplain\r\n"
        qid = send(s, "sender@origin.test", ["hank@example.test"], msg)
        s.quit()
        f = srv.wait_maildir("hank", 1)[0]
        check_delivered(read_file(f), "sender@origin.test", "hank@example.test", HELO, "127.0.0.1",
                        qid, ["hank@example.test"], msg, protocol="SMTP")


@test("null sender <> is kept as Return-Path: <>")
def _():
    with Server() as srv:
        s = srv.smtplib()
        s.ehlo(HELO)
        msg = b"Subject: bounce\r\n\r\nundeliverable\r\n"
        qid = send(s, "<>", ["ivan@example.test"], msg)
        s.quit()
        f = srv.wait_maildir("ivan", 1)[0]
        check_delivered(read_file(f), "", "ivan@example.test", HELO, "127.0.0.1", qid,
                        ["ivan@example.test"], msg)


@test("a message without final CRLF and a large message arrive intact")
def _():
    with Server() as srv:
        s = srv.smtplib()
        s.ehlo(HELO)
        big = b"".join(b"line %06d " % i + b"x" * 90 + b"\r\n" for i in range(20000))  # ~2 MB
        msg = b"Subject: big\r\n\r\n" + big
        qid = send(s, "sender@origin.test", ["judy@example.test"], msg)
        # smtplib adds the missing CRLF before the final dot; the server stores it.
        qid2 = send(s, "sender@origin.test", ["judy@example.test"], b"Subject: short\r\n\r\nno eol")
        s.quit()
        files = srv.wait_maildir("judy", 2)
        contents = {f: read_file(f) for f in files}
        f1 = [f for f in files if qid in f][0]
        f2 = [f for f in files if qid2 in f][0]
        check_delivered(contents[f1], "sender@origin.test", "judy@example.test", HELO, "127.0.0.1",
                        qid, ["judy@example.test"], msg)
        check_delivered(contents[f2], "sender@origin.test", "judy@example.test", HELO, "127.0.0.1",
                        qid2, ["judy@example.test"], b"Subject: short\r\n\r\nno eol\r\n")


run()
