"""Crash-test worker: index a batch of procedures until killed (run by test_crash.py).

``python crash_worker.py --once JSON`` runs one batch in this process.
``python crash_worker.py`` imports everything once, prints ``zygote``, then for
each JSON line on stdin forks a child that runs one batch and prints
``pid N`` (the child to kill) and, once the child is gone, ``exit N STATUS``.
Forking skips the 1–2 s of imports per trial; each child is a real process
that the test kills with SIGKILL in the middle of its work.

JSON keys: ``db_url``, ``index_dir``, ``procedures`` ([uid, frames folder, csv]
triples), ``force`` (UIDs to re-index), ``delete`` (a UID to delete first, or
null), ``sleep`` (seconds per encoder call) and ``log`` (a file where the child
appends one line per step, so the test knows where the kill landed).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from helpers.indexing import TRACKLETS, FakeEncoder

from polypindex.indexer.pipeline import delete_procedure, index_sources
from polypindex.indexer.progress import Progress
from polypindex.indexer.sources import frames_source
from polypindex.indexer.store import Store


class SlowEncoder(FakeEncoder):
    def __init__(self, sleep: float) -> None:
        super().__init__()
        self.sleep = sleep

    def embed_sequences(self, seqs: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
        time.sleep(self.sleep)
        return super().embed_sequences(seqs, batch_size)


def run_batch(cfg: dict[str, Any], say: Callable[[str], None]) -> None:
    store = Store(cfg["db_url"])
    encoder = SlowEncoder(cfg["sleep"])
    sources = {
        uid: frames_source(folder, csv, uid=uid, config=TRACKLETS)
        for uid, folder, csv in cfg["procedures"]
    }
    say("ready")
    if cfg["delete"] and store.has_procedure(cfg["delete"]):
        delete_procedure(cfg["delete"], store, cfg["index_dir"])
        say(f"deleted {cfg['delete']}")

    def said(p: Progress) -> None:
        say(f"done {p.current_uid}")

    common = dict(progress=False, snapshot_every_s=0.0, on_progress=said, thumbnails=False)
    forced = [sources[u] for u in cfg["force"]]
    index_sources(forced, store, cfg["index_dir"], encoder, force=True, **common)  # type: ignore[arg-type]
    index_sources(list(sources.values()), store, cfg["index_dir"], encoder, **common)  # type: ignore[arg-type]
    say("finished")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--once":  # one batch in this process
        run_batch(json.loads(sys.argv[2]), lambda what: print(what, flush=True))
        return
    print("zygote", flush=True)
    for line in sys.stdin:
        cfg = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child: one batch, then exit without running the parent's cleanup
            code = 0
            with open(cfg["log"], "a", buffering=1) as log:
                try:
                    run_batch(cfg, lambda what, log=log: log.write(what + "\n"))
                except BaseException:
                    traceback.print_exc()
                    code = 1
            os._exit(code)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {pid} {status}", flush=True)


if __name__ == "__main__":
    main()
