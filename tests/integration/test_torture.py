"""The crash durability torture, short: 20 SIGKILLs at random instants while
clients send to Maildir and mbox recipients, then every mailbox is checked
(tests/torture/torture.py says what exactly; `make check-torture` runs 200)."""

import sys
sys.dont_write_bytecode = True     # no __pycache__ in the source tree

import os

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "torture"))

from harness import run, test      # noqa: E402
from torture import torture        # noqa: E402

KILLS = 20


@test("torture, short: %d SIGKILLs under load; every 250 delivered exactly once, byte for byte, "
      "nothing partial or duplicated" % KILLS, timeout=120)
def _():
    seed = int(os.environ["TORTURE_SEED"]) if os.environ.get("TORTURE_SEED") else None
    torture(kills=KILLS, clients=4, seed=seed, drain_timeout=60)


run()
