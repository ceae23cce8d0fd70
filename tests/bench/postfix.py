"""tests/bench/postfix.py — a private Postfix instance for the benchmark.

Everything lives in one directory: conf/ (main.cf, master.cf), queue/ (the
queue_directory), data/ (the data_directory), mail/ (virtual mailboxes) and
maillog (written by postlogd). The system's /etc/postfix is neither read nor
changed: config_directory and meta_directory both point at conf/, and daemons
find it through MAIL_CONFIG, which master passes on. master runs in the
foreground (`master -c conf -d`) in its own process group, so the benchmark
owns it and can kill whatever is left of the group at the end.

Two scenarios, the same as Guillemot's:

  queue    every recipient gets HOLD (check_recipient_access static:HOLD): the
           cleanup daemon writes and fsyncs the queue file, then files it in
           hold/ instead of incoming/, and smtpd answers 250. Nothing is
           delivered. in_flow_delay is 0: the flow-control tokens come from the
           queue manager as it takes mail in, which never happens here, so the
           default (1s) would pause every smtpd for a second per message.
  deliver  example.test is a virtual mailbox domain: the virtual delivery agent
           writes every message to mail/user/Maildir/ as uid/gid nobody
           (virtual_uid_maps/virtual_gid_maps static), Postfix's default
           concurrency (20 deliveries at a time for one domain).
"""

import os
import pwd
import grp
import re
import shutil
import signal
import subprocess
import time

from common import LOCALPART, children_of, count_files, stop, tail_of, wait_listening

DAEMON_DIR = "/usr/lib/postfix/sbin"

# Queue subdirectories: name -> (owner, group, mode), as post-install makes them.
QUEUE_DIRS = {
    "active": ("postfix", "root", 0o700), "bounce": ("postfix", "root", 0o700),
    "corrupt": ("postfix", "root", 0o700), "defer": ("postfix", "root", 0o700),
    "deferred": ("postfix", "root", 0o700), "flush": ("postfix", "root", 0o700),
    "hold": ("postfix", "root", 0o700), "incoming": ("postfix", "root", 0o700),
    "saved": ("postfix", "root", 0o700), "trace": ("postfix", "root", 0o700),
    "private": ("postfix", "root", 0o700), "maildrop": ("postfix", "postdrop", 0o730),
    "public": ("postfix", "postdrop", 0o710), "pid": ("root", "root", 0o755),
}

MAIN_CF = """\
# Written by tests/bench/postfix.py: a private instance for the benchmark.
compatibility_level = 3.6
config_directory = {conf}
meta_directory = {conf}
queue_directory = {queue}
data_directory = {data}
daemon_directory = {daemon_dir}
command_directory = /usr/sbin
mail_owner = postfix
setgid_group = postdrop
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
myhostname = postfix.bench.example.test
mydomain = bench.example.test
myorigin = $myhostname
mydestination =
relay_domains =
mynetworks = 127.0.0.0/8
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
smtputf8_enable = no
biff = no
alias_maps =
alias_database =
local_recipient_maps =
default_process_limit = {process_limit}
message_size_limit = 50000000
virtual_mailbox_limit = 50000000
virtual_mailbox_domains = example.test
virtual_mailbox_base = {mail}
virtual_mailbox_maps = static:{localpart}/Maildir/
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = 100
{scenario}"""

SCENARIO_CF = {
    "queue": ("smtpd_recipient_restrictions = check_recipient_access static:HOLD, permit\n"
              "in_flow_delay = 0s\n"),
    "deliver": "",
}

# Debian's master.cf, less the services that need a chroot or a package.
MASTER_CF = """\
# Written by tests/bench/postfix.py.
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

# Lines of the maillog that say something went wrong.
TROUBLE = re.compile(r"\b(warning|error|fatal|panic):")
DELAY = re.compile(r"\bdelay=([\d.]+),.*\bstatus=sent\b")


def available():
    """Why a private Postfix cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "Postfix's master must start as root"
    if not os.access(os.path.join(DAEMON_DIR, "master"), os.X_OK):
        return f"no {DAEMON_DIR}/master (Debian package postfix)"
    try:
        pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
    except KeyError:
        return "no postfix user or postdrop group"
    return None


class Postfix:
    """A private Postfix under DIRECTORY, serving SMTP on 127.0.0.1:PORT."""

    name = "postfix"

    def __init__(self, directory, port, scenario, process_limit=200):
        self.root = directory
        self.port = port
        self.scenario = scenario
        self.conf = os.path.join(directory, "conf")
        self.queue = os.path.join(directory, "queue")
        self.data = os.path.join(directory, "data")
        self.mail = os.path.join(directory, "mail")
        self.log_path = os.path.join(directory, "maillog")
        self.stderr_path = os.path.join(directory, "master.err")
        self.process_limit = process_limit
        self.proc = None
        self.known_pids = set()

    # -- set-up -------------------------------------------------------------

    def write_config(self):
        postfix = pwd.getpwnam("postfix")
        nobody = pwd.getpwnam("nobody")
        os.makedirs(self.conf)
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            f.write(MAIN_CF.format(conf=self.conf, queue=self.queue, data=self.data,
                                   daemon_dir=DAEMON_DIR, root=self.root, mail=self.mail,
                                   process_limit=self.process_limit, localpart=LOCALPART,
                                   uid=nobody.pw_uid, gid=nobody.pw_gid,
                                   scenario=SCENARIO_CF[self.scenario]))
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(port=self.port))
        # Debian's daemons load map types from $meta_directory/dynamicmaps.cf;
        # this instance needs only built-in ones (static).
        open(os.path.join(self.conf, "dynamicmaps.cf"), "w").close()
        # Postfix waits until a configuration file is a second old before it
        # reads it (so as not to read one being edited): date them back.
        past = time.time() - 10
        for name in os.listdir(self.conf):
            os.utime(os.path.join(self.conf, name), (past, past))
        os.makedirs(self.queue)
        os.chmod(self.queue, 0o755)
        for name, (user, group, mode) in QUEUE_DIRS.items():
            path = os.path.join(self.queue, name)
            os.mkdir(path)
            os.chown(path, pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid)
            os.chmod(path, mode)
        os.mkdir(self.data, 0o700)
        os.chown(self.data, postfix.pw_uid, postfix.pw_gid)
        os.mkdir(self.mail, 0o755)
        os.chown(self.mail, nobody.pw_uid, nobody.pw_gid)
        # postlogd (running as postfix) creates the log in this directory.
        os.chmod(self.root, 0o755)

    def start(self, spawn, env):
        """Writes the configuration and starts master in the foreground, in a
        new process group; returns when smtpd's port listens."""
        self.write_config()
        env = dict(env, MAIL_CONFIG=self.conf)
        with open(self.stderr_path, "wb") as err:
            self.proc = spawn([os.path.join(DAEMON_DIR, "master"), "-c", self.conf, "-d"],
                              stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT,
                              cwd=self.root, env=env, start_new_session=True)
        try:
            wait_listening(self.proc, self.port, "postfix master", self.stderr_path)
        except RuntimeError as e:
            raise RuntimeError(f"{e}{tail_of(self.log_path)}") from None

    # -- during a run ---------------------------------------------------------

    def pids(self):
        """master and its children (smtpd, cleanup, qmgr, trivial-rewrite,
        virtual, anvil, postlogd...)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        pids = [self.proc.pid] + children_of(self.proc.pid)
        self.known_pids.update(pids)
        return pids

    def done_dir(self):
        """Where a finished message is: hold/ (queue) or the Maildir's new/."""
        if self.scenario == "queue":
            return os.path.join(self.queue, "hold")
        return os.path.join(self.mail, LOCALPART, "Maildir", "new")

    def done_count(self):
        return count_files(self.done_dir())

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def queue_left(self):
        """Files still in the queue outside hold/ (deliver: all should be gone)."""
        n = 0
        for name in ("incoming", "active", "deferred", "maildrop", "corrupt"):
            for _, _, files in os.walk(os.path.join(self.queue, name)):
                n += len(files)
        return n

    # -- the end --------------------------------------------------------------

    def stop(self):
        """SIGTERM to master (which stops its children), then SIGKILL to
        whatever is left in its process group."""
        if self.proc is None:
            return None
        status = stop(self.proc, timeout=20)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for pid in self.known_pids:
            try:
                os.kill(pid, 0)
            except OSError:
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    ours = f"MAIL_CONFIG={self.conf}".encode() in f.read().split(b"\0")
            except OSError:
                ours = False
            if ours:
                os.kill(pid, signal.SIGKILL)
        return status

    def analyse(self):
        """(delays of delivered messages in seconds, lines that are trouble)."""
        delays, trouble = [], []
        if not os.path.exists(self.log_path):
            return delays, ["no maillog"]
        with open(self.log_path, errors="replace") as f:
            for line in f:
                m = DELAY.search(line)
                if m:
                    delays.append(float(m.group(1)))
                elif TROUBLE.search(line):
                    trouble.append(line.rstrip("\n"))
        if os.path.exists(self.stderr_path):
            with open(self.stderr_path, errors="replace") as f:
                trouble.extend(line.rstrip("\n") for line in f if line.strip())
        return delays, trouble

    def keep_files(self, dest_prefix):
        """Copies the maillog and master's stderr next to DEST_PREFIX."""
        kept = []
        for path, suffix in ((self.log_path, "maillog"), (self.stderr_path, "master.err")):
            if os.path.exists(path):
                shutil.copyfile(path, f"{dest_prefix}-{suffix}")
                kept.append(f"{dest_prefix}-{suffix}")
        return kept

