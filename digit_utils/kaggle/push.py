"""Pushing several kernels in dependency order: a kernel mounts its upstream kernels' outputs from
their latest *complete* run, so an upstream must have finished before its reader starts.

Without waiting, a push is refused (before anything is sent) when a kernel's upstream is part of
the same push or its latest run is not complete. With waiting, kernels go stage by stage: each
one is pushed once its upstream kernels are complete, polling ``kaggle kernels status``. A kernel
pushed here is followed by its version (``OWNER/SLUG/N``), so the previous version's "complete"
never stands for the new run's.

Every check that needs no upload runs first: the credentials, each built kernel's metadata
against the stage graph (``remote.check_built``), the accelerator, and the CLI's version.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from digit_utils.errors import KaggleError
from digit_utils.kaggle import client, kernels, remote


def log_url(ref: str) -> str:
    return f"https://www.kaggle.com/code/{ref}/log"


@dataclass
class Poller:
    """Polls a kernel's status until it completes, fails or the time is up."""

    poll: float = 60.0  # seconds between status calls
    timeout: float = 12 * 3600.0  # seconds to wait for one kernel (Kaggle's GPU session limit)
    say: Callable[[str], None] = print
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    every: int = 10  # an unchanged state is reported again every this many polls
    complete: set[str] = field(default_factory=set)

    def wait(self, ref: str, *, version: int | None = None, just_pushed: bool = False) -> None:
        """Return once ``ref``'s run (of ``version``, else its latest) is complete; KaggleError
        on failure or timeout."""
        query = f"{ref}/{version}" if version is not None else ref
        if query in self.complete:
            return
        start, last, polls = self.clock(), None, 0
        if just_pushed:  # give Kaggle a moment to register the new version's run
            self.sleep(self.poll)
        while True:
            state, failure = remote.status(query)
            elapsed = self.clock() - start
            if state == "complete":
                self.say(f"{ref}: complete after {elapsed / 60:.0f} min")
                self.complete.add(query)
                return
            if state in remote.FAILED_STATES:
                raise KaggleError(
                    f"kernel {ref} did not complete: {failure or state}; its log is at "
                    f"{log_url(ref)}. Fix it, then push again with --wait"
                )
            if elapsed >= self.timeout:
                raise KaggleError(
                    f"kernel {ref} is still {state} after {self.timeout / 60:.0f} min; follow it "
                    f"with `digits kaggle kernel status {ref}` (log: {log_url(ref)}) and push "
                    "the kernels that read it once it is complete"
                )
            if state != last or polls % self.every == 0:
                self.say(f"{ref}: {state} ({elapsed / 60:.0f} min), waiting…")
            last, polls = state, polls + 1
            self.sleep(self.poll)


def refuse_unready(metas: list[dict]) -> None:
    """KaggleError, before anything is pushed, if a kernel's upstream is pushed alongside it or
    its latest run is not complete."""
    pushing = {meta["id"] for meta in metas}
    for meta in metas:
        for source in meta["kernel_sources"]:
            if source in pushing:
                raise KaggleError(
                    f"{meta['id']} reads {source}, which this push starts: it would run "
                    f"before {source} completes. Push with --wait (stage by stage), or push "
                    f"{source} alone first and wait until it is complete"
                )
            state, failure = remote.status(source)
            if state != "complete":
                why = f"{state}: {failure}" if failure else state
                raise KaggleError(
                    f"{meta['id']} reads {source}, whose latest run is {why} (log: "
                    f"{log_url(source)}): wait until it is complete, or push with --wait"
                )


def push_in_order(
    folders: list[Path],
    *,
    accelerator: str = kernels.ACCELERATOR,
    wait: bool = False,
    poller: Poller | None = None,
) -> list[str]:
    """Push built kernels (in pipeline order); returns the pushed kernel ids.

    ``wait`` pushes each kernel once its upstream kernels are complete and finally waits for
    every pushed kernel; otherwise unready upstreams refuse the push (see :func:`refuse_unready`).
    """
    kernels.check_accelerator(accelerator)
    if not client.has_credentials():
        raise KaggleError(client.NO_CREDENTIALS)
    poller = poller or Poller()
    metas = [remote.check_built(folder) for folder in folders]
    if wait:
        client.require_version(remote.MIN_WAIT_CLI, "reads the status of one kernel version")
    else:
        refuse_unready(metas)
    pushed: dict[str, int | None] = {}  # kernel id: the version this push made
    for folder, meta in zip(folders, metas, strict=True):
        if wait:
            for source in meta["kernel_sources"]:
                poller.wait(source, version=pushed.get(source), just_pushed=source in pushed)
        out = remote.push(folder, accelerator=accelerator)
        poller.say(out.rstrip())
        pushed[meta["id"]] = remote.pushed_version(out)
        if wait and pushed[meta["id"]] is None:
            raise KaggleError(
                f"the push of {meta['id']} names no version number ({out.strip()!r}), so its "
                "run cannot be told from the previous one's; follow it with `digits kaggle "
                "kernel status` and push its readers once it is complete"
            )
    if wait:
        for ref, version in pushed.items():
            poller.wait(ref, version=version, just_pushed=True)
    return list(pushed)
