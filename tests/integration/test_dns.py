"""DNS lookups from rules (doc/dns.texi): dns-lookup, dns-reverse and
dns-error? against the real server, with no name server at all.

Records come from #:dns-local-data, which the server answers itself. The
resolver is pointed at a "swallower": a UDP socket on 127.0.0.1 that reads
queries and never answers, so that a query that should have been answered
locally shows up there instead of leaving the machine, and so that lookups
that must wait do wait (dns-timeout). Every packet stays on loopback.

Rules report what a lookup answered by rejecting with the answer written
with ~s: "550 5.7.1 ((10 . \"mx1.example.test\"))"."""

import sys
sys.dont_write_bytecode = True     # no __pycache__ in the source tree

import os
import socket
import threading
import time

from harness import (Server, add_cleanup, assert_equal, assert_in, diag, make_tempdir, queue_id,
                     run, run_guillemot, stuff, test)

HELO = "client.example.test"
SENDER = "sender@origin.test"
MSG = b"From: sender@origin.test\r\nSubject: dns\r\n\r\nHello.\r\n"

LOCAL_DATA = [
    "mx1.example.test. 300 IN A 192.0.2.1",
    "mx1.example.test. 300 IN AAAA 2001:db8::25",
    "mx2.example.test. 300 IN A 192.0.2.2",
    "example.test. 300 IN MX 20 mx2.example.test.",
    "example.test. 300 IN MX 10 MX1.Example.Test.",
    "example.test. 300 IN MX 20 mx0.example.test.",
    'example.test. 300 IN TXT "v=spf1 " "ip4:192.0.2.0/24 -all"',
    "nullmx.test. 300 IN MX 0 .",
    "1.2.0.192.in-addr.arpa. 300 IN PTR mx1.example.test.",
    "1.2.0.192.in-addr.arpa. 300 IN PTR alias.example.test.",
    "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. 300 IN PTR mx6.example.test.",
    "blocked.dnsbl.example.test. 300 IN A 127.0.0.2",
]


def scheme_strings(items):
    return "'(" + " ".join('"%s"' % s.replace("\\", "\\\\").replace('"', '\\"') for s in items) + ")"


def config(rules, **settings):
    """A configuration: the server, local delivery, the DNS settings given as
    keyword arguments (dns_timeout=1 -> #:dns-timeout 1), then RULES."""
    lines = ["(use-modules (guillemot))",
             '(define-server #:hostname "mx.example.test")',
             '(local-domains "example.test" "localhost")',
             '(deliver-local (maildir "mail/~a/Maildir"))']
    for key, value in settings.items():
        if isinstance(value, (list, tuple)):
            value = scheme_strings(value)
        elif isinstance(value, str):
            value = '"%s"' % value
        lines.append("(define-server #:%s %s)" % (key.replace("_", "-"), value))
    return "\n".join(lines) + "\n" + rules


# A recipient's local part selects the lookup; the rule rejects with its answer.
PROBES = r"""
(define probes
  `(("a"       . ,(lambda () (dns-lookup "mx1.example.test" 'a)))
    ("aaaa"    . ,(lambda () (dns-lookup "mx1.example.test." 'aaaa)))
    ("mx"      . ,(lambda () (dns-lookup "example.test" 'mx)))
    ("mxupper" . ,(lambda () (dns-lookup "EXAMPLE.test" 'MX)))
    ("nullmx"  . ,(lambda () (dns-lookup "nullmx.test" 'mx)))
    ("txt"     . ,(lambda () (dns-lookup "example.test" 'txt)))
    ("ptr4"    . ,(lambda () (dns-reverse "192.0.2.1")))
    ("ptr6"    . ,(lambda () (dns-reverse "2001:db8::25")))
    ("ptrmap"  . ,(lambda () (dns-reverse "::ffff:192.0.2.1")))
    ("missing" . ,(lambda () (dns-lookup "missing.example.test" 'a)))
    ("nodata"  . ,(lambda () (dns-lookup "mx2.example.test" 'aaaa)))
    ("literal" . ,(lambda () (dns-lookup "[192.0.2.1]" 'a)))
    ("nullsender" . ,(lambda () (dns-lookup #f 'mx)))
    ("two"     . ,(lambda () (list (dns-lookup "mx1.example.test" 'a)
                                   (dns-lookup "mx2.example.test" 'a))))
    ("slow"    . ,(lambda () (let ((v (dns-lookup "slow.example.net" 'a)))
                               (list v (dns-error? v)))))
    ("badtype" . ,(lambda () (dns-lookup "example.test" 'cname)))))

(rule rcpt "probe"
  (lambda (s rcpt)
    (let ((probe (assoc (address-local rcpt) probes)))
      (if probe
          (reject 550 (format #f "5.7.1 ~s" ((cdr probe))))
          (next)))))
"""

DNSBL = r"""
(rule rcpt "dnsbl"
  (lambda (s rcpt)
    (let ((listed (dns-lookup (string-append (address-local rcpt) ".dnsbl.example.test") 'a)))
      (cond ((dns-error? listed) (defer 451 "4.4.3 DNS list unavailable"))
            ((equal? listed '("127.0.0.2")) (reject 554 "5.7.1 Listed"))
            (else (next))))))
"""


class Swallower:
    """A UDP socket on 127.0.0.1 that reads DNS queries and never answers
    them, or with RCODE answers each with that error code and no record.
    .names lists the query names received, in order."""

    def __init__(self, rcode=None):
        self.rcode = rcode
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.names = []
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        add_cleanup(self.close)

    @property
    def forwarder(self):
        return "127.0.0.1@%d" % self.port

    def _loop(self):
        while not self.stopping:
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.names.append(qname(data))
            if self.rcode is not None and len(data) >= 12:
                # Same id and question; QR, RD as asked, RA, the error code; no records.
                flags = 0x8000 | (data[2] & 0x01) << 8 | 0x80 | self.rcode
                reply = data[:2] + flags.to_bytes(2, "big") + b"\x00\x01" + bytes(6) + data[12:]
                try:
                    self.sock.sendto(reply, peer)
                except OSError:
                    pass

    def close(self):
        self.stopping = True
        self.thread.join(2)
        self.sock.close()


def qname(packet):
    labels, i = [], 12
    while i < len(packet) and packet[i]:
        n = packet[i]
        labels.append(packet[i + 1:i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    return ".".join(labels).lower()


def dns_server(rules, swallower=None, settings=None, **dns):
    """Start a server with RULES; DNS goes to SWALLOWER when given."""
    if swallower:
        dns.setdefault("dns_resolver", "forward")
        dns.setdefault("dns_forwarders", [swallower.forwarder])
    dns.setdefault("dns_local_data", LOCAL_DATA)
    srv = Server(config_text=config(rules, **dns), settings=settings)
    srv.start()
    return srv


def probe(c, local):
    """RCPT TO:<LOCAL@example.test> after MAIL: the reply (the probe's answer)."""
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    r = c.cmd("RCPT TO:<%s@example.test>" % local)
    c.send_expect("RSET", 250)
    return r


def answer(c, local):
    r = probe(c, local)
    if r.code != 550 or not r.last.startswith("550 5.7.1 "):
        raise AssertionError("probe %s: expected 550 5.7.1 ANSWER, got %r" % (local, r))
    return r.last[len("550 5.7.1 "):]


# ---------------------------------------------------------------------------
# Answers

@test("answers from dns-local-data: a, aaaa, mx sorted, txt joined, ptr v4/v6, missing, no data")
def _():
    sw = Swallower()
    srv = dns_server(PROBES, sw)
    c = srv.connect()
    c.ehlo(HELO)
    expected = {
        "a": '("192.0.2.1")',
        "aaaa": '("2001:db8::25")',
        "mx": '((10 . "mx1.example.test") (20 . "mx0.example.test") (20 . "mx2.example.test"))',
        "mxupper": '((10 . "mx1.example.test") (20 . "mx0.example.test") (20 . "mx2.example.test"))',
        "nullmx": '((0 . "."))',
        "txt": '("v=spf1 ip4:192.0.2.0/24 -all")',
        "ptr6": '("mx6.example.test")',
        "ptrmap": None,                         # same as ptr4, checked below
        "missing": "()",
        "nodata": "()",
        "literal": "()",
        "nullsender": "()",
        "two": '(("192.0.2.1") ("192.0.2.2"))',
    }
    got = {local: answer(c, local) for local in list(expected) + ["ptr4"]}
    for local, want in expected.items():
        if want is not None:
            assert_equal(got[local], want, "answer of probe %s" % local)
    # Two PTR records: both, in either order.
    assert got["ptr4"] in ('("mx1.example.test" "alias.example.test")',
                           '("alias.example.test" "mx1.example.test")'), got["ptr4"]
    assert_equal(got["ptrmap"], got["ptr4"], "::ffff:192.0.2.1 looked up as 192.0.2.1")
    c.send_expect("QUIT", 221)
    assert_equal(sw.names, [], "queries that reached the forwarder")


@test("an rcpt rule rejects a recipient whose DNSBL lookup answers (\"127.0.0.2\"); others pass")
def _():
    sw = Swallower()
    srv = dns_server(DNSBL, sw)
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    c.send_expect("RCPT TO:<blocked@example.test>", 554, "5.7.1 Listed")
    c.send_expect("RCPT TO:<fine@example.test>", 250)
    c.send_expect("DATA", 354)
    c.send(stuff(MSG))
    qid = queue_id(c.expect(250, "2.0.0 Ok: queued as"))
    c.send_expect("QUIT", 221)
    files = srv.wait_maildir("fine", 1)
    assert qid in os.path.basename(files[0])
    assert_equal(srv.maildir_files("blocked"), [], "mail for the listed recipient")
    assert_equal(sw.names, [], "queries that reached the forwarder")


@test("dns-resolver system (the default): names under .test answer from local data, no server asked")
def _():
    srv = Server(config_text=config(DNSBL, dns_local_data=LOCAL_DATA))
    srv.start()
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    c.send_expect("RCPT TO:<blocked@example.test>", 554, "5.7.1 Listed")
    # missing.dnsbl.example.test: NXDOMAIN from the .test zone (RFC 6761), at once.
    t0 = time.monotonic()
    c.send_expect("RCPT TO:<fine@example.test>", 250)
    assert time.monotonic() - t0 < 1.0, "the lookup of a missing .test name waited"


@test("a rule with a bad record type fails: 451 4.3.0, the log names dns-lookup and the type")
def _():
    sw = Swallower()
    srv = dns_server(PROBES, sw)
    c = srv.connect()
    c.ehlo(HELO)
    r = probe(c, "badtype")
    assert_equal(r.last, "451 4.3.0 Temporary policy failure", "reply")
    srv.wait_log(r"dns-lookup: unknown record type cname: expected one of the symbols "
                 r"a, aaaa, mx, txt, ptr")


# ---------------------------------------------------------------------------
# Waiting

@test("a lookup nobody answers gives 'timeout after dns-timeout (1 s), and dns-error? says so")
def _():
    sw = Swallower()
    srv = dns_server(PROBES, sw, dns_timeout=1)
    c = srv.connect()
    c.ehlo(HELO)
    t0 = time.monotonic()
    got = answer(c, "slow")
    elapsed = time.monotonic() - t0
    assert_equal(got, "(timeout #t)", "answer")
    assert 0.9 <= elapsed < 2.0, "the timeout came after %.2fs, not about 1s" % elapsed
    assert "slow.example.net" in sw.names, "the forwarder got %r" % sw.names
    # The session goes on normally afterwards.
    assert_equal(answer(c, "a"), '("192.0.2.1")', "a lookup after the timeout")


@test("a forwarder answering SERVFAIL or REFUSED gives 'servfail at once, and dns-error? says so")
def _():
    for rcode in (2, 5):
        sw = Swallower(rcode)
        srv = dns_server(PROBES, sw, dns_timeout=5)
        c = srv.connect()
        c.ehlo(HELO)
        t0 = time.monotonic()
        assert_equal(answer(c, "slow"), "(servfail #t)", "answer with rcode %d" % rcode)
        assert time.monotonic() - t0 < 4.0, "the failure waited for the timeout"
        assert "slow.example.net" in sw.names, "the forwarder got %r" % sw.names
        srv.stop()


@test("50 sessions waiting on DNS do not slow down a normal session", timeout=60)
def _():
    sw = Swallower()
    timeout = 5
    srv = dns_server(PROBES, sw, dns_timeout=timeout,
                     settings={"max-connections-per-client": 200})
    waiting = []
    for i in range(50):
        c = srv.connect(timeout=timeout + 10)
        c.ehlo(HELO)
        c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
        c.send("RCPT TO:<slow@example.test>\r\n")
        waiting.append(c)
    t_sent = time.monotonic()
    # Every one of them is parked on its lookup by now (the forwarder saw it).
    deadline = time.monotonic() + 3
    while sw.names.count("slow.example.net") < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "slow.example.net" in sw.names, "no lookup reached the forwarder: %r" % sw.names

    t0 = time.monotonic()
    c = srv.connect()
    c.ehlo(HELO)
    assert_equal(answer(c, "a"), '("192.0.2.1")', "a local lookup meanwhile")
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    c.send_expect("RCPT TO:<normal@example.test>", 250)
    c.send_expect("DATA", 354)
    c.send(stuff(MSG))
    queue_id(c.expect(250, "2.0.0 Ok: queued as"))
    c.send_expect("QUIT", 221)
    normal = time.monotonic() - t0
    still_waiting = time.monotonic() - t_sent < timeout
    assert still_waiting, "the normal session finished after the slow lookups timed out"
    assert normal < 1.0, "the normal session took %.2fs while 50 sessions waited" % normal
    diag("normal session: %.3fs while 50 sessions waited on the DNS" % normal)

    for w in waiting:
        r = w.reply()
        assert_equal(r.last, "550 5.7.1 (timeout #t)", "reply of a waiting session")
    elapsed = time.monotonic() - t_sent
    assert timeout - 0.5 <= elapsed < timeout + 3, \
        "the waiting sessions were answered after %.2fs (dns-timeout %ds)" % (elapsed, timeout)
    srv.wait_maildir("normal", 1)


# ---------------------------------------------------------------------------
# Configuration errors

def check_config(**dns):
    d = make_tempdir()
    path = os.path.join(d, "dns.scm")
    with open(path, "w") as f:
        f.write(config("", **dns))
    return path, run_guillemot("check-config", "-c", path)


@test("check-config: a local-data record unbound cannot parse exits 1 naming dns-local-data")
def _():
    path, out = check_config(dns_local_data=["bad.example.test. 300 IN XA 192.0.2.1"])
    assert_equal(out.returncode, 1, "exit status (stderr: %r)" % out.stderr)
    assert_in("%s: dns-local-data, dns-local-zones: " % path, out.stderr, "stderr")
    assert_in("XA", out.stderr, "stderr")


@test("check-config: dns-resolver forward without dns-forwarders, or a bad forwarder, exits 1")
def _():
    path, out = check_config(dns_resolver="forward")
    assert_equal(out.returncode, 1, "exit status (stderr: %r)" % out.stderr)
    assert_in("dns-resolver forward needs at least one address in dns-forwarders", out.stderr,
              "stderr")
    path, out = check_config(dns_resolver="forward", dns_forwarders=["ns.example.test"])
    assert_equal(out.returncode, 1, "exit status (stderr: %r)" % out.stderr)
    assert_in('dns-forwarders: "ns.example.test" is not an IPv4 or IPv6 address', out.stderr,
              "stderr")
    path, out = check_config(dns_resolver="recursive", dns_timeout=0)
    assert_equal(out.returncode, 1, "exit status (stderr: %r)" % out.stderr)
    assert_in("dns-timeout must be between 1 and 600 seconds, got 0", out.stderr, "stderr")


@test("check-config: good DNS settings, local zones included, are valid")
def _():
    path, out = check_config(dns_resolver="forward", dns_forwarders=["192.0.2.53", "2001:db8::53@5353"],
                             dns_local_zones=["example.net", "example.org transparent"],
                             dns_local_data=LOCAL_DATA + ["www.example.net. 300 IN A 192.0.2.80"],
                             dns_timeout=2)
    assert_equal((out.returncode, out.stderr), (0, ""), "exit status and stderr")


@test("check-config: a lookup at the top level of the configuration exits 1 naming dns-lookup")
def _():
    d = make_tempdir()
    path = os.path.join(d, "top.scm")
    with open(path, "w") as f:
        f.write(config("(define mx (dns-lookup \"example.test\" 'mx))\n"))
    out = run_guillemot("check-config", "-c", path)
    assert_equal(out.returncode, 1, "exit status (stderr: %r)" % out.stderr)
    assert_in("%s:5:1: dns-lookup: only rules can wait for the DNS, and this call is not inside "
              "a rule" % path, out.stderr, "stderr")


@test("dns-local-zones: a missing name of a static zone is answered at once, not asked")
def _():
    sw = Swallower()
    srv = dns_server(r"""
(rule rcpt "zone"
  (lambda (s rcpt)
    (reject 550 (format #f "5.7.1 ~s" (dns-lookup (string-append (address-local rcpt)
                                                                 ".example.net") 'a)))))
""", sw, dns_local_zones=["example.net"],
                     dns_local_data=["www.example.net. 300 IN A 192.0.2.80"])
    c = srv.connect()
    c.ehlo(HELO)
    assert_equal(answer(c, "www"), '("192.0.2.80")', "www.example.net")
    t0 = time.monotonic()
    assert_equal(answer(c, "nosuch"), "()", "nosuch.example.net")
    assert time.monotonic() - t0 < 1.0, "the lookup waited"
    assert_equal(sw.names, [], "queries that reached the forwarder")



@test("client-name confirms the PTR name forward: localhost for 127.0.0.1 and ::1, cached per connection")
def _():
    rules = ('(rule helo "name" (lambda (s h) (reject 550 (format #f "5.7.1 you are ~s ~s" '
             '(client-name s) (client-name s)))))\n')
    srv = Server(config_text=config(rules))
    srv.start()
    for ipv6 in (False, True):
        c = srv.connect(ipv6=ipv6)
        c.send_expect("EHLO " + HELO, 550, '5.7.1 you are "localhost" "localhost"')
        c.send_expect("QUIT", 221)

run()
