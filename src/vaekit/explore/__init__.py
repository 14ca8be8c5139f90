"""`vaekit explore RUN [RUN_B]`: a local web page to move through a saved run's latent space and
watch the decoder answer (the notes' pictures, live). The decoding runs in this process.

    import vaekit
    vaekit.explore("runs/vae2")                    # serves http://127.0.0.1:8765/ until Ctrl-C
    vaekit.explore("runs/ae2", "runs/vae2")        # the same pointer drives both runs side by side

    server = vaekit.explore_server("runs/vae2", port=0)   # bound, not yet serving: for tests and notebooks
    threading.Thread(target=server.serve_forever, daemon=True).start(); print(server.url)
"""

from __future__ import annotations

import webbrowser
from pathlib import Path

from ..outputs.plots import open_run
from .server import ExploreServer
from .views import RequestError, RunView

__all__ = ["ExploreServer", "RequestError", "RunView", "explore", "explore_server"]


def explore_server(run: str | Path, run_b: str | Path | None = None, *, host: str = "127.0.0.1", port: int = 8765,
                   device: str = "cpu", data_dir: str | None = None, checkpoint: str = "last",
                   allow_changed_data: bool = False) -> ExploreServer:
    """The explorer for one run (or two side by side), loaded and bound to host:port (0: a free port)."""
    views = [RunView(open_run(r, device, data_dir, checkpoint, allow_changed_data)) for r in (run, run_b) if r is not None]
    return ExploreServer(views, host, port)


def explore(run: str | Path, run_b: str | Path | None = None, *, host: str = "127.0.0.1", port: int = 8765,
            open_browser: bool = False, device: str = "cpu", data_dir: str | None = None, checkpoint: str = "last",
            allow_changed_data: bool = False, log=print) -> None:
    """Serve the explorer until Ctrl-C (then close it cleanly and return)."""
    server = explore_server(run, run_b, host=host, port=port, device=device, data_dir=data_dir,
                            checkpoint=checkpoint, allow_changed_data=allow_changed_data)
    names = " and ".join(v.run.name for v in server.views)
    log(f"exploring {names} at {server.url} (Ctrl-C stops)")
    if not server.loopback:
        log(f"note: bound to {host}: anyone who can reach this machine on port {server.server_address[1]} can use it")
    if open_browser:
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log("explorer stopped")
    finally:
        server.server_close()
