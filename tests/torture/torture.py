"""torture.py — crash durability torture (DESIGN.md §5, §6 "Nothing is lost").

Several client threads send a stream of uniquely numbered messages (one or
several per connection, one to three recipients each, some delivered into
Maildirs and some appended to mbox files, sizes from a few hundred bytes to
about a megabyte) while the main thread kills the server with SIGKILL at
random instants and starts it again. Some kills come a few milliseconds after
a start, during recovery. After the last kill the server is started once more,
the clients stop, the queue drains, the server stops with SIGTERM, and every
mailbox is read back:

  * a message that got its 250 is delivered exactly once to each of its
    recipients, byte for byte as stored (Return-Path:, Delivered-To:, the
    Received: header with the queue id of the 250, then the message);
  * a message whose final "." was sent but whose reply never came ("unknown")
    is delivered to all of its recipients once or to none of them;
  * a message refused with a 4xx/5xx, or whose data never went out whole, is
    delivered nowhere;
  * every Maildir file is whole, Maildir tmp/ directories are empty, every mbox
    parses as mboxrd with only complete entries, no dot-lock is left;
  * spool/queue, incoming, deferred, hold and corrupt are empty.

Run it as a program (make check-torture) or call torture() from a test
(tests/integration/test_torture.py runs a short variant). Settings come from
arguments or the environment: TORTURE_KILLS (default 200), TORTURE_CLIENTS
(6), TORTURE_SEED (random; printed, so that a failing run can be repeated).
"""

import sys
sys.dont_write_bytecode = True     # no __pycache__ in the source tree

import collections
import os
import random
import re
import socket
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from harness import (HOSTNAME, Server, as_stored, diag, received_block,  # noqa: E402
                     stuff, wait_for)
from faultlib import Faults                                              # noqa: E402

HELO = "client.example.test"
SENDER = "torture@origin.test"
MAILDIR_USERS = ["md0", "md1", "md2", "md3"]
MBOX_USERS = ["mb0", "mb1", "mb2"]
CLIENT_TIMEOUT = 20            # seconds for any one socket operation of a client

# In about half of the stretches between two kills, the fault library (faults.c)
# cuts writes to the spool and the mailboxes into pieces with a pause between
# them (mbox appends the most) and pauses before each fsync of queue/: a kill
# then often lands in the middle of writing a queue file, a Maildir file or an
# mbox entry, which with plain writes happens only in the kernel's short copy.
SLOW_RULES = ["chunk .mbox 16384 3000", "chunk /spool/ 32768 1000", "chunk /mail/ 32768 1000",
              "delay fsync /spool/queue$ 1000"]

# Recipients whose local part starts with "mb" read mbox; the others Maildir.
CONFIG = """
(use-modules (guillemot))

(define-server
  #:hostname "%s"
  #:listen '("127.0.0.1:2525")
  #:state-dir "var")

(local-domains "example.test")

(deliver-local (maildir "mail/~a/Maildir"))

(rule data "mbox readers"
  (lambda (s msg)
    (for-each (lambda (r)
                (when (string-prefix? "mb" r)
                  (deliver-to! s r (mbox "mail/~a.mbox"))))
              (recipients s))
    (next)))
""" % HOSTNAME


class VerboseServer(Server):
    """The server with -v: it then logs Maildir copies found already delivered."""

    def command(self):
        return Server.command(self) + ["-v"]


# ---------------------------------------------------------------------------
# Messages

class Msg:
    """One numbered message and what its client saw.

    state: "unsent"     the transaction failed before DATA's 354
           "incomplete" the connection failed while the data was being sent
           "unknown"    the final "." went out, the reply never came
           "acked"      250 with a queue id
           "refused"    another reply to the final "."
    """

    def __init__(self, number, rcpts, body):
        self.number = number
        self.rcpts = rcpts
        self.body = body
        self.state = "unsent"
        self.qid = None
        self.reply = None
        self._stored = None

    def stored(self):
        """The message as the server stores it (LF line ends)."""
        if self._stored is None:
            self._stored = as_stored(self.body)
        return self._stored


def make_body(number, rng):
    """A message (CRLF lines) numbered NUMBER, with lines that need dot-stuffing
    and mboxrd quoting, of a size drawn from a wide range."""
    roll = rng.random()
    if roll < 0.70:
        size = rng.randint(200, 8000)
    elif roll < 0.95:
        size = rng.randint(8000, 100000)
    else:
        size = rng.randint(100000, 1200000)
    head = (b"From: Torture <%s>\r\nTo: undisclosed-recipients:;\r\n"
            b"Subject: torture %d\r\nMessage-ID: <%d.torture@origin.test>\r\nX-Torture: %d\r\n\r\n"
            % (SENDER.encode(), number, number, number))
    specials = [b"From the start of a line %d" % number, b">From quoted once",
                b".a line starting with a dot", b".", b"..", b">>From twice",
                b"From ", b"\tindented %d" % number, b""]
    lines = [head.rstrip(b"\r\n")]
    total = len(head)
    salt = rng.getrandbits(32)
    i = 0
    while total < size:
        if rng.random() < 0.05:
            line = rng.choice(specials)
        else:
            line = b"%d:%d:%08x %s" % (number, i, salt ^ i, b"x" * rng.randint(0, 90))
        lines.append(line)
        total += len(line) + 2
        i += 1
    lines.append(b"end of torture message %d" % number)
    return b"\r\n".join(lines) + b"\r\n"


class Ledger:
    """What every client thread recorded, under one lock."""

    def __init__(self, seed):
        self.lock = threading.Lock()
        self.messages = {}
        self.next_number = 1
        self.connections = 0
        self.seed = seed

    def new_message(self, rng):
        with self.lock:
            number = self.next_number
            self.next_number += 1
        users = MAILDIR_USERS + MBOX_USERS
        rcpts = ["%s@example.test" % u for u in rng.sample(users, rng.randint(1, 3))]
        msg = Msg(number, rcpts, make_body(number, rng))
        with self.lock:
            self.messages[number] = msg
        return msg


# ---------------------------------------------------------------------------
# Clients

class Lost(Exception):
    """The connection broke (the server was killed, most likely)."""


class Client:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
        self.buf = b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise Lost("send: %s" % e)

    def reply(self):
        """(code, last line) of one whole reply."""
        while True:
            while b"\r\n" not in self.buf:
                try:
                    data = self.sock.recv(65536)
                except OSError as e:
                    raise Lost("recv: %s" % e)
                if not data:
                    raise Lost("connection closed")
                self.buf += data
            line, self.buf = self.buf.split(b"\r\n", 1)
            m = re.match(rb"^(\d{3})([ -])", line)
            if not m:
                raise AssertionError("malformed reply line %r" % line)
            if m.group(2) == b" ":
                return int(m.group(1)), line.decode("utf-8", "replace")

    def command(self, line, want):
        self.send(line.encode() + b"\r\n")
        code, text = self.reply()
        if code != want:
            raise Lost("%s: %s" % (line, text))
        return text


QUEUED_RE = re.compile(r"^250 2\.0\.0 Ok: queued as ([0-9A-Za-z]+)$")


def client_loop(srv, ledger, rng, stop, errors):
    """Open connections and send messages until STOP is set."""
    while not stop.is_set():
        try:
            c = Client(srv.port)
        except OSError:
            time.sleep(0.01)                  # the server is down: it comes back
            continue
        with ledger.lock:
            ledger.connections += 1
        try:
            code, text = c.reply()
            if code != 220:
                raise Lost(text)
            c.command("EHLO " + HELO, 250)
            for _ in range(rng.choice([1, 1, 1, 2, 3, 5])):
                if stop.is_set():
                    break
                msg = ledger.new_message(rng)
                c.command("MAIL FROM:<%s>" % SENDER, 250)
                for r in msg.rcpts:
                    c.command("RCPT TO:<%s>" % r, 250)
                c.command("DATA", 354)
                msg.state = "incomplete"
                data = stuff(msg.body)
                # Large messages go in pieces, so that kills land during DATA too.
                step = max(len(data) // 4, 65536)
                for pos in range(0, len(data), step):
                    if pos:
                        time.sleep(0.01)
                    c.send(data[pos:pos + step])
                msg.state = "unknown"
                code, text = c.reply()
                msg.reply = text
                m = QUEUED_RE.match(text)
                if code == 250 and m:
                    msg.qid = m.group(1)
                    msg.state = "acked"
                else:
                    msg.state = "refused"
            c.command("QUIT", 221)
        except Lost:
            pass
        except Exception as e:                # noqa: a bug in the test itself
            errors.append(repr(e))
        finally:
            c.close()


# ---------------------------------------------------------------------------
# Reading the mailboxes back

TORTURE_RE = re.compile(rb"^X-Torture: (\d+)$", re.M)
RECEIVED_ID_RE = re.compile(rb"^Received: from .*\n\tby .* id ([0-9A-Za-z]+)", re.M)
MAILDIR_NAME_RE = re.compile(r"^\d+\.([0-9A-Za-z]+)_R(\d+)\.(.+?)(:2,.*)?$")
FROM_LINE_RE = re.compile(rb"^From (\S+) (Mon|Tue|Wed|Thu|Fri|Sat|Sun) "
                          rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                          rb"[ \d]\d \d\d:\d\d:\d\d \d{4}$")


class Problems:
    def __init__(self):
        self.items = []

    def add(self, text):
        if len(self.items) < 50:
            self.items.append(text)
        elif len(self.items) == 50:
            self.items.append("... (more problems left out)")

    def __bool__(self):
        return bool(self.items)


def check_copy(content, rcpt, ledger, where, counts, problems):
    """One delivered copy for RCPT: whole, byte for byte, counted."""
    m = TORTURE_RE.search(content)
    if not m or int(m.group(1)) not in ledger.messages:
        problems.add("%s: not a torture message: %r" % (where, content[:200]))
        return
    msg = ledger.messages[int(m.group(1))]
    if rcpt not in msg.rcpts:
        problems.add("%s: message %d went to %s, not one of %r" % (where, msg.number, rcpt,
                                                                     msg.rcpts))
        return
    q = RECEIVED_ID_RE.search(content)
    qid = q.group(1).decode() if q else "?"
    if msg.qid and qid != msg.qid:
        problems.add("%s: message %d has queue id %s, its 250 said %s"
                     % (where, msg.number, qid, msg.qid))
    head = ("Return-Path: <%s>\nDelivered-To: %s\n" % (SENDER, rcpt)).encode()
    m = re.compile(re.escape(head) + received_block(HELO, "127.0.0.1", qid, msg.rcpts),
                   re.S).match(content)
    if not m or content[m.end():] != msg.stored():
        problems.add("%s: message %d (%s) is not the bytes sent: %d bytes, expected %d + headers"
                     % (where, msg.number, msg.state, len(content), len(msg.stored())))
        return
    counts[(msg.number, rcpt)] += 1


def read_maildir(path, rcpt, ledger, counts, problems):
    tmp = os.path.join(path, "tmp")
    if os.path.isdir(tmp) and os.listdir(tmp):
        problems.add("%s: tmp/ is not empty: %r" % (rcpt, sorted(os.listdir(tmp))[:5]))
    files = 0
    for sub in ("new", "cur"):
        d = os.path.join(path, sub)
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            files += 1
            if not MAILDIR_NAME_RE.match(name):
                problems.add("%s: unexpected file name %s/%s" % (rcpt, sub, name))
            with open(os.path.join(d, name), "rb") as f:
                check_copy(f.read(), rcpt, ledger, "%s %s/%s" % (rcpt, sub, name), counts,
                           problems)
    return files


def mbox_entries(data):
    """Split mboxrd DATA into (From_ line, unquoted entry) pairs; raises
    AssertionError on an incomplete or malformed entry."""
    if not data:
        return []
    if not data.startswith(b"From "):
        raise AssertionError("does not start with a From_ line: %r" % data[:80])
    starts = [0] + [m.start() + 1 for m in re.finditer(rb"\nFrom ", data)]
    entries = []
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(data)
        chunk = data[start:end]
        nl = chunk.index(b"\n")
        from_line, rest = chunk[:nl], chunk[nl + 1:]
        if not FROM_LINE_RE.match(from_line):
            raise AssertionError("entry %d at byte %d: malformed From_ line %r" % (i, start, from_line))
        if not rest.endswith(b"\n\n"):
            raise AssertionError("entry %d at byte %d is incomplete (ends with %r)"
                                 % (i, start, rest[-40:]))
        body = re.sub(rb"(?m)^>(>*From )", rb"\1", rest[:-1])
        entries.append((from_line, body))
    return entries


def read_mbox(path, rcpt, ledger, counts, problems):
    if os.path.exists(path + ".lock"):
        problems.add("%s: a dot-lock was left: %s.lock" % (rcpt, os.path.basename(path)))
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return 0
    try:
        entries = mbox_entries(data)
    except AssertionError as e:
        problems.add("%s: mbox damaged: %s" % (rcpt, e))
        return 0
    for i, (from_line, body) in enumerate(entries):
        if not from_line.startswith(b"From %s " % SENDER.encode()):
            problems.add("%s: entry %d: From_ line %r" % (rcpt, i, from_line))
        check_copy(body, rcpt, ledger, "%s mbox entry %d" % (rcpt, i), counts, problems)
    return len(entries)


# ---------------------------------------------------------------------------
# The run

def torture(kills=200, clients=6, seed=None, drain_timeout=120, quiet=False):
    """Run the torture; raise AssertionError listing what went wrong. Returns
    the summary (a dict). Must run inside a harness test (it starts a Server)."""
    if seed is None:
        seed = random.randrange(1 << 32)
    say = (lambda text: None) if quiet else diag
    say("torture: seed %d (TORTURE_SEED=%d repeats the random choices, not the timing), "
        "%d kills, %d clients" % (seed, seed, kills, clients))
    rng = random.Random(seed)
    faults = Faults()
    srv = VerboseServer(config_text=CONFIG, ipv6=False, env=faults.env(),
                        settings={"workers": 4, "retry-min": 1, "retry-max": 2})
    ledger = Ledger(seed)
    t0 = time.monotonic()
    srv.start()
    stop = threading.Event()
    errors = []
    threads = [threading.Thread(target=client_loop, daemon=True,
                                args=(srv, ledger, random.Random(rng.getrandbits(64)), stop, errors))
               for _ in range(clients)]
    for t in threads:
        t.start()

    early = slow = 0
    for k in range(kills):
        if rng.random() < 0.5:
            faults.set(*SLOW_RULES)
            slow += 1
        else:
            faults.clear()
        roll = rng.random()
        if roll < 0.1 and k > 0:
            # Kill again during start-up and recovery.
            srv.kill()
            srv.start(wait=False)
            time.sleep(rng.uniform(0.0, 0.08))
            early += 1
        else:
            time.sleep(rng.uniform(0.005, 0.05) if roll < 0.4 else rng.uniform(0.05, 0.6))
        srv.kill()
        srv.start()
    faults.clear()
    time.sleep(0.5)                            # a little traffic after the last restart
    stop.set()
    for t in threads:
        t.join(CLIENT_TIMEOUT * 3)
    sending = time.monotonic() - t0

    spool_dirs = ("queue", "incoming", "deferred", "hold")
    wait_for(lambda: not any(srv.spool_files(d) for d in spool_dirs), drain_timeout, 0.2,
             "the queue to drain")
    status = srv.stop()
    duration = time.monotonic() - t0

    problems = Problems()
    for e in errors:
        problems.add("client error: %s" % e)
    if status != 0:
        problems.add("exit status after SIGTERM: %s" % status)
    for d in spool_dirs + ("corrupt",):
        left = srv.spool_files(d)
        if left:
            problems.add("spool/%s is not empty: %r" % (d, left[:5]))

    counts = collections.Counter()
    copies = 0
    for user in MAILDIR_USERS:
        copies += read_maildir(srv.maildir(user), "%s@example.test" % user, ledger, counts, problems)
    for user in MBOX_USERS:
        copies += read_mbox(srv.mbox_path(user), "%s@example.test" % user, ledger, counts, problems)

    states = collections.Counter(m.state for m in ledger.messages.values())
    unknown_delivered = 0
    for msg in ledger.messages.values():
        got = [counts[(msg.number, r)] for r in msg.rcpts]
        if msg.state == "acked":
            if got != [1] * len(got):
                problems.add("message %d (250, queue id %s): copies per recipient %r for %r"
                             % (msg.number, msg.qid, got, msg.rcpts))
        elif msg.state == "unknown":
            if got == [1] * len(got):
                unknown_delivered += 1
            elif got != [0] * len(got):
                problems.add("message %d (no reply seen): copies per recipient %r for %r"
                             % (msg.number, got, msg.rcpts))
        elif any(got):
            problems.add("message %d (%s%s): delivered %r to %r"
                         % (msg.number, msg.state, ", " + msg.reply if msg.reply else "",
                            got, msg.rcpts))

    log = srv.log_text()
    summary = {
        "seed": seed,
        "kills": kills,
        "kills_during_startup": early,
        "kills_slowed": slow,
        "starts": srv.starts,
        "connections": ledger.connections,
        "messages": len(ledger.messages),
        "sent": sum(states[s] for s in ("acked", "unknown", "refused")),
        "acked": states["acked"],
        "unknown": states["unknown"],
        "unknown_delivered": unknown_delivered,
        "refused": states["refused"],
        "incomplete": states["incomplete"],
        "unsent": states["unsent"],
        "copies": copies,
        "incoming_removed": len(re.findall(r"spool=incoming, status=removed", log)),
        "resumed": sum(int(n) for n in re.findall(r"queue: resuming (\d+) message", log)),
        "already_in_maildir": len(re.findall(r"status=already in (?:new|cur)/", log)),
        "mbox_already": len(re.findall(r"mbox=.*status=already appended", log)),
        "mbox_partial": len(re.findall(r"mbox=.*status=(?:partial entry removed|interrupted append "
                                       r"removed)", log)),
        "locks_broken": len(re.findall(r"mbox-lock=.*status=removed", log)),
        "sending_seconds": round(sending, 1),
        "duration": round(duration, 1),
    }
    say("torture: %(kills)d kills (%(kills_during_startup)d during start-up, %(kills_slowed)d with "
        "writes cut in pieces), %(starts)d starts, "
        "%(connections)d connections, %(duration).1fs (%(sending_seconds).1fs sending)" % summary)
    say("torture: %(messages)d messages: %(sent)d sent whole, %(acked)d got 250, "
        "%(unknown)d unknown (%(unknown_delivered)d of them delivered), %(refused)d refused, "
        "%(incomplete)d cut during DATA, %(unsent)d cut before DATA" % summary)
    say("torture: %(copies)d copies delivered; after the kills: %(incoming_removed)d unacknowledged "
        "incoming file(s) removed, %(resumed)d queued message(s) resumed, %(already_in_maildir)d "
        "Maildir copies found already delivered, %(mbox_already)d mbox entries found already "
        "appended, %(mbox_partial)d partial mbox entries cut off, %(locks_broken)d dead dot-locks "
        "removed" % summary)
    if problems:
        raise AssertionError("torture (seed %d) found %d problem(s):\n  %s"
                             % (seed, len(problems.items), "\n  ".join(problems.items)))
    if summary["acked"] == 0:
        raise AssertionError("no message got its 250: the torture tested nothing")
    return summary


def main():
    import harness
    import argparse
    p = argparse.ArgumentParser(description="crash durability torture")
    p.add_argument("--kills", type=int, default=int(os.environ.get("TORTURE_KILLS", 200)))
    p.add_argument("--clients", type=int, default=int(os.environ.get("TORTURE_CLIENTS", 6)))
    p.add_argument("--seed", type=int,
                   default=int(os.environ["TORTURE_SEED"]) if os.environ.get("TORTURE_SEED") else None)
    args = p.parse_args()
    sys.argv[1:] = []                          # the harness reads test names there

    @harness.test("torture: %d SIGKILLs under load, then every mailbox checked" % args.kills,
                  timeout=600 + args.kills * 3)
    def _():
        torture(args.kills, args.clients, args.seed)

    harness.run()


if __name__ == "__main__":
    main()
