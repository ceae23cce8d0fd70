"""faultlib.py — the LD_PRELOAD fault library (faults.c) from Python: where it
is, and its control file. Shared by tests/torture/torture.py and
tests/integration/test_disk_full.py."""

import os
import subprocess
import tempfile

from harness import TOP_BUILDDIR, TOP_SRCDIR, make_tempdir

_built = None


def library():
    """The path of faults.so: built by make check, else compiled here once."""
    global _built
    made = os.path.join(TOP_BUILDDIR, "tests", "torture", "faults.so")
    if os.path.exists(made):
        return made
    if _built and os.path.exists(_built):
        return _built
    out = os.path.join(tempfile.mkdtemp(prefix="guillemot-faults-so-"), "faults.so")
    src = os.path.join(TOP_SRCDIR, "tests", "torture", "faults.c")
    cc = os.environ.get("CC", "cc")
    p = subprocess.run([cc, "-shared", "-fPIC", "-o", out, src, "-ldl", "-lpthread"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError("cannot build %s (make check builds it):\n%s" % (src, p.stderr))
    _built = out
    return out


class Faults:
    """The control file of faults.so: set() installs rules, clear() removes them.

    Rules (see faults.c): "OPERATION PATH-SUBSTRING [ERRNO]" fails the call,
    "chunk PATH-SUBSTRING BYTES USEC" cuts writes into pieces with pauses,
    "delay OPERATION PATH-SUBSTRING USEC" pauses before the call."""

    def __init__(self):
        self.path = os.path.join(make_tempdir("guillemot-faults-"), "faults")

    def env(self):
        """The environment that makes a server use the library."""
        # Under AddressSanitizer the preloaded library comes before ASan's
        # runtime, which ASan refuses unless told that this is intended.
        asan = os.environ.get("ASAN_OPTIONS", "")
        return {"LD_PRELOAD": library(), "GUILLEMOT_FAULTS": self.path,
                "ASAN_OPTIONS": (asan + ":" if asan else "") + "verify_asan_link_order=0"}

    def set(self, *rules):
        tmp = self.path + ".new"
        with open(tmp, "w") as f:
            f.write("".join(r + "\n" for r in rules))
        os.rename(tmp, self.path)              # never half a file for the library

    def clear(self):
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def injected(self):
        """The failures injected so far, as "OPERATION PATH ERRNO" lines."""
        try:
            with open(self.path + ".log") as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []
