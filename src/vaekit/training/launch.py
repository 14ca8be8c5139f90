"""`python -m vaekit.training.launch N ARGS...`: `python -m vaekit ARGS...` in N processes on this machine, started by
torchrun's own launcher (elastic_launch, as `torchrun --standalone --nproc-per-node N` does) with its log kept
quiet: the processes' one-line errors are the messages, and the exit status is the first failed process's.
`vaekit train --nproc N` runs this."""

from __future__ import annotations

import logging
import os
import sys
import uuid

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from ..distributed import die_with_parent


def launch(nproc: int, args: list[str]) -> int:
    for name in [*logging.root.manager.loggerDict, "torch.distributed.elastic"]:
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", run_id=str(uuid.uuid4()), max_restarts=0, monitor_interval=0.1)
    try:
        elastic_launch(config, sys.executable)("-m", "vaekit", *args)
    except ChildFailedError as e:
        code = e.get_first_failure()[1].exitcode
        return code if code > 0 else 128 - code   # killed by a signal: 128 + its number, as a shell reports it
    except SignalException as e:   # SIGTERM or SIGINT to the launcher: the processes got it too, and saved
        return 128 + e.sigval
    return 0


if __name__ == "__main__":
    die_with_parent()   # `vaekit train --nproc` killed: this launcher stops, and stops its processes
    code = launch(int(sys.argv[1]), sys.argv[2:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)   # not the interpreter's exit: the rendezvous store's threads can abort it ("terminate called")
