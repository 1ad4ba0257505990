"""`python -m ferkit.training CONFIG [key=value ...] [--resume]`: train without the command line package."""

import logging
import sys

from ferkit.training import load_config, train

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
args = sys.argv[1:]
resume = "--resume" in args
args = [a for a in args if a != "--resume"]
config = args[0] if args and "=" not in args[0] else None
print(train(load_config(config, [a for a in args if "=" in a]), resume=resume))
