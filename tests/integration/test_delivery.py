"""Local delivery seen from the mailbox: mbox (examples/mbox.scm) byte for
byte, and a message sent by swaks into a Maildir."""

import sys
sys.dont_write_bytecode = True     # no __pycache__ in the source tree

import datetime
import os
import re
import shutil
import subprocess
import threading

from harness import (MBOX_CONFIG, Server, as_stored, assert_equal, assert_in,
                     check_delivered, make_tempdir, queue_id, read_file, received_block, run, skip, test,
                     wait_for)

HELO = "client.example.test"
ASCTIME_RE = rb"(Mon|Tue|Wed|Thu|Fri|Sat|Sun) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ \d]\d \d\d:\d\d:\d\d \d{4}"


def send(s, sender, rcpts, msg):
    code, resp = s.mail(sender)
    assert code == 250, (code, resp)
    for r in rcpts:
        code, resp = s.rcpt(r)
        assert code == 250, (r, code, resp)
    code, resp = s.data(msg)
    assert code == 250, (code, resp)
    return queue_id("%d %s" % (code, resp.decode()))


def mboxrd_quote(stored):
    out = []
    for line in stored.split(b"\n")[:-1]:
        if re.match(rb"^>*From ", line):
            line = b">" + line
        out.append(line + b"\n")
    return b"".join(out)


def mbox_entry_re(sender, rcpt, qid, rcpts, msg):
    """Regex for one mboxrd entry: From line, delivery headers, quoted message, blank line."""
    head = re.escape(("From %s " % (sender or "MAILER-DAEMON")).encode()) + ASCTIME_RE + b"\n"
    head += re.escape(("Return-Path: <%s>\nDelivered-To: %s\n" % (sender, rcpt)).encode())
    head += received_block(HELO, "127.0.0.1", qid, rcpts)
    return head + re.escape(mboxrd_quote(as_stored(msg))) + b"\n"


def wait_mbox_entries(srv, local, n, timeout=10):
    path = srv.mbox_path(local)
    def enough():
        try:
            data = read_file(path)
        except FileNotFoundError:
            return None
        return data if len(re.findall(rb"^From \S+ " + ASCTIME_RE + rb"$", data, re.M)) >= n else None
    data = wait_for(enough, timeout, what="%d entries in %s" % (n, path))
    # The lock file is gone once the delivery is complete.
    wait_for(lambda: not os.path.exists(path + ".lock"), 5, what="mbox lock removed")
    return read_file(path)


@test("mbox: From line, >From quoting, two messages appended with a blank line between")
def _():
    with Server(config=MBOX_CONFIG) as srv:
        s = srv.smtplib()
        s.ehlo(HELO)
        msg1 = (b"From: Sender <sender@origin.test>\r\nSubject: first\r\n\r\n"
                b"From the start of a line\r\n>From already quoted\r\n>>From twice\r\n"
                b"Fromage is not quoted\r\n From with a space before\r\n.dot line\r\nend\r\n")
        msg2 = b"Subject: second\r\n\r\nFrom here too\r\n\r\n\r\ntrailing blank lines above\r\n"
        id1 = send(s, "sender@origin.test", ["kate@example.test"], msg1)
        id2 = send(s, "sender@origin.test", ["kate@example.test"], msg2)
        s.quit()
        data = wait_mbox_entries(srv, "kate", 2)
        rx = re.compile(mbox_entry_re("sender@origin.test", "kate@example.test", id1,
                                      ["kate@example.test"], msg1)
                        + mbox_entry_re("sender@origin.test", "kate@example.test", id2,
                                        ["kate@example.test"], msg2) + rb"\Z")
        m = rx.match(data)
        assert m, "mbox content differs:\n  expected (regex): %r\n  actual: %r" % (rx.pattern, data)
        # Spot checks that do not depend on the regex above.
        assert_in(b"\n>From the start of a line\n>>From already quoted\n>>>From twice\n"
                  b"Fromage is not quoted\n From with a space before\n.dot line\nend\n\nFrom ",
                  data, "mbox")
        first = re.match(rb"From sender@origin\.test (" + ASCTIME_RE + rb")\n", data)
        assert first, data[:100]
        when = datetime.datetime.strptime(first.group(1).decode(), "%a %b %d %H:%M:%S %Y")
        when = when.replace(tzinfo=datetime.timezone.utc)
        skew = abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds())
        assert skew < 120, "From line date %s is %.0fs away from now" % (first.group(1), skew)
        assert data.endswith(b"trailing blank lines above\n\n"), data[-60:]


@test("mbox: null sender appears as MAILER-DAEMON; each recipient gets its own file")
def _():
    with Server(config=MBOX_CONFIG) as srv:
        s = srv.smtplib()
        s.ehlo(HELO)
        msg = b"Subject: bounce\r\n\r\nnotice\r\n"
        rcpts = ["leo@example.test", "mia@example.test"]
        qid = send(s, "<>", rcpts, msg)
        s.quit()
        for rcpt in rcpts:
            local = rcpt.split("@")[0]
            data = wait_mbox_entries(srv, local, 1)
            rx = re.compile(mbox_entry_re("", rcpt, qid, rcpts, msg) + rb"\Z")
            assert rx.match(data), "mbox %s differs: %r" % (local, data)
            assert data.startswith(b"From MAILER-DAEMON "), data[:60]
        assert not os.path.exists(srv.path("mail", "leo", "Maildir")), "Maildir made under mbox config"


@test("10 concurrent clients x 5 messages: 50 distinct ids, each delivered exactly once", timeout=60)
def _():
    with Server() as srv:
        ids = []
        errors = []
        lock = threading.Lock()
        def client(k):
            try:
                s = srv.smtplib(timeout=10)
                s.ehlo(HELO)
                for i in range(5):
                    msg = b"Subject: client %d message %d\r\n\r\n" % (k, i) + b"data\r\n" * 200
                    qid = send(s, "sender@origin.test", ["many@example.test"], msg)
                    with lock:
                        ids.append((qid, k, i))
                s.quit()
            except Exception as e:
                errors.append(repr(e))
        threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        assert_equal(len(set(q for q, _, _ in ids)), 50, "distinct queue ids")
        files = srv.wait_maildir("many", 50, timeout=20, settle=0.3)
        for qid, k, i in ids:
            match = [f for f in files if ".%s_R0." % qid in f]
            assert_equal(len(match), 1, "files for %s" % qid)
            assert_in(b"Subject: client %d message %d\n" % (k, i), read_file(match[0]), "message")
        srv.wait_queue_empty()


@test("a recipient given twice in one transaction gets one copy")
def _():
    # What Postfix (cleanup duplicate filter), Exim and Sendmail do.
    with Server() as srv:
        c = srv.connect()
        c.ehlo(HELO)
        c.send_expect("MAIL FROM:<sender@origin.test>", 250)
        c.send_expect("RCPT TO:<twice@example.test>", 250)
        c.send_expect("RCPT TO:<twice@example.test>", 250)
        c.send_expect("RCPT TO:<other@example.test>", 250)
        c.send_expect("DATA", 354)
        c.send(b"Subject: dup\r\n\r\nonce please\r\n.\r\n")
        qid = queue_id(c.expect(250))
        srv.wait_maildir("other", 1)
        files = srv.wait_maildir("twice", 1, settle=0.5)
        assert_in(qid, files[0], "file name")


@test("LC_ALL=de_DE.UTF-8 changes neither the Received: date (RFC 5322), the mbox From line nor log numbers")
def _():
    localedef = shutil.which("localedef")
    if not localedef or not os.path.isdir("/usr/share/i18n/locales"):
        skip("localedef or locale sources not available")
    locales = make_tempdir()
    p = subprocess.run([localedef, "-i", "de_DE", "-f", "UTF-8", os.path.join(locales, "de_DE.UTF-8")],
                       capture_output=True, text=True, timeout=30)
    if p.returncode not in (0, 1) or not os.path.exists(os.path.join(locales, "de_DE.UTF-8")):
        skip("could not build the de_DE.UTF-8 locale: %s" % p.stderr)
    env = {"LOCPATH": locales, "LC_ALL": "de_DE.UTF-8", "LANG": "de_DE.UTF-8"}
    failures = []
    for config, check in ((None, "maildir"), (MBOX_CONFIG, "mbox")):
        with Server(config=config, env=env) as srv:
            s = srv.smtplib()
            s.ehlo(HELO)
            msg = b"Subject: Datum\r\n\r\nx\r\n"
            qid = send(s, "sender@origin.test", ["de@example.test"], msg)
            s.quit()
            try:
                if check == "maildir":
                    f = srv.wait_maildir("de", 1)[0]
                    check_delivered(read_file(f), "sender@origin.test", "de@example.test", HELO,
                                    "127.0.0.1", qid, ["de@example.test"], msg)
                else:
                    data = wait_mbox_entries(srv, "de", 1)
                    rx = re.compile(mbox_entry_re("sender@origin.test", "de@example.test", qid,
                                                  ["de@example.test"], msg) + rb"\Z")
                    assert rx.match(data), "mbox entry differs: %r" % data
            except AssertionError as e:
                failures.append("%s: %s" % (check, e))
            line = srv.wait_log(r"%s: (to=<de@example\.test>.*)" % qid)[0]
            if not re.search(r", delay=\d+\.\d+, ", line):
                failures.append("log: delay not written with a decimal point: %r" % line)
    assert not failures, "\n".join(failures)


def swaks_message(transcript):
    """The message as swaks sent it: the ' -> ' lines between 354 and '.'."""
    lines = transcript.split("\n")
    start = next(i for i, l in enumerate(lines) if l.startswith("<-  354"))
    out = []
    for l in lines[start + 1:]:
        if not l.startswith(" -> "):
            continue
        l = l[4:]
        if l == ".":
            break
        out.append((l[1:] if l.startswith(".") else l) + "\r\n")
    return "".join(out).encode()


@test("swaks sends one message (pipelined) into a Maildir")
def _():
    swaks = shutil.which("swaks") or "/usr/bin/swaks"
    if not os.path.exists(swaks):
        skip("swaks not installed")
    with Server() as srv:
        p = subprocess.run([swaks, "--server", "127.0.0.1", "--port", str(srv.port),
                            "--from", "swaks@origin.test", "--to", "nina@example.test",
                            "--helo", "swaks.example.test", "--pipeline",
                            "--header", "Subject: via swaks",
                            "--body", "From swaks with love\n.starts with a dot\nbye"],
                           capture_output=True, text=True, timeout=20)
        assert_equal(p.returncode, 0, "swaks exit status (output: %s %s)" % (p.stdout, p.stderr))
        m = re.search(r"^<-  (250 2\.0\.0 Ok: queued as \S+)$", p.stdout, re.M)
        assert m, "no queued reply in swaks output:\n" + p.stdout
        qid = queue_id(m.group(1))
        msg = swaks_message(p.stdout)
        assert_in(b"\r\nSubject: via swaks\r\n", msg, "message swaks sent")
        f = srv.wait_maildir("nina", 1)[0]
        assert_in(qid, os.path.basename(f), "Maildir file name")
        content = read_file(f)
        check_delivered(content, "swaks@origin.test", "nina@example.test", "swaks.example.test",
                        "127.0.0.1", qid, ["nina@example.test"], msg)
        assert_in(b"\n.starts with a dot\n", content, "delivered message")
        srv.wait_log(qid + r": to=<nina@example\.test>, relay=maildir, .*status=sent")


@test("swaks over IPv6 with a multi-recipient --to list")
def _():
    swaks = shutil.which("swaks") or "/usr/bin/swaks"
    if not os.path.exists(swaks):
        skip("swaks not installed")
    with Server() as srv:
        if not srv.ipv6:
            skip("no IPv6 loopback")
        p = subprocess.run([swaks, "-6", "--server", "::1", "--port", str(srv.port6),
                            "--from", "swaks@origin.test",
                            "--to", "olga@example.test,pete@localhost",
                            "--helo", "swaks6.example.test", "--body", "six"],
                           capture_output=True, text=True, timeout=20)
        assert_equal(p.returncode, 0, "swaks exit status (output: %s %s)" % (p.stdout, p.stderr))
        qid = queue_id(re.search(r"^<-  (250 2\.0\.0 Ok: queued as \S+)$", p.stdout, re.M).group(1))
        msg = swaks_message(p.stdout)
        for local, rcpt in (("olga", "olga@example.test"), ("pete", "pete@localhost")):
            f = srv.wait_maildir(local, 1)[0]
            check_delivered(read_file(f), "swaks@origin.test", rcpt, "swaks6.example.test", "::1",
                            qid, ["olga@example.test", "pete@localhost"], msg)


run()
