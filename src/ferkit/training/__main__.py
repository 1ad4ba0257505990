"""`python -m ferkit.training CONFIG [-s key=value ...] [--resume] ...`: the `ferkit train` command under a module
name, so that `torchrun -m ferkit.training` can launch it (same options, same function)."""

import sys

from ferkit.cli import app

app(args=["train", *sys.argv[1:]], prog_name="python -m ferkit.training")
