"""`python -m vaekit ...`: the same as the `vaekit` command."""

import os
import sys

from .cli import main
from .distributed import from_environment
from .errors import VaekitError

code = main()
try:
    distributed = from_environment().distributed
except VaekitError:
    distributed = False   # main() has said what is wrong with the environment
if distributed:
    # one of torchrun's processes: its work is done and saved; skip the interpreter's teardown, in which torch's
    # process-group threads can abort the process ("terminate called without an active exception", exit 134)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
