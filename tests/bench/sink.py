"""tests/bench/sink.py — Postfix's smtp-sink, the protocol ceiling: it answers
every command, reads DATA, and throws the message away."""

import os
import subprocess

from common import proc_status, stop, wait_listening


class Sink:
    name = "smtp-sink"

    def __init__(self, program, directory, port, backlog=256):
        self.program = program
        self.root = directory
        self.port = port
        self.backlog = backlog
        self.log_path = os.path.join(directory, "smtp-sink.log")
        self.proc = None

    def start(self, spawn, env):
        argv = [self.program]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]  # it refuses to run as root without -u
        argv += [f"127.0.0.1:{self.port}", str(self.backlog)]
        with open(self.log_path, "wb") as log:
            self.proc = spawn(argv, stdin=subprocess.DEVNULL, stdout=log,
                              stderr=subprocess.STDOUT, cwd=self.root, env=env)
        wait_listening(self.proc, self.port, "smtp-sink", self.log_path)

    def pids(self):
        return [self.proc.pid] if self.alive() else []

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def peak_rss_kb(self):
        return proc_status(self.proc.pid).get("VmHWM") if self.alive() else None

    def stop(self):
        return stop(self.proc, timeout=5) if self.proc is not None else None

    def analyse(self):
        with open(self.log_path, errors="replace") as f:
            return [], [line.rstrip("\n") for line in f if line.strip()]

    def keep_files(self, dest_prefix):
        return []
