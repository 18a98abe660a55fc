"""What the A1111/Forge console and progress endpoint show of this extension: its log lines and the job that
reads moments from the model.

A1111 and Forge configure logging only when started with ``--loglevel`` (or ``SD_WEBUI_LOG_LEVEL``); by
default Python prints warnings only, so the jump summary, "reading moments" and the calibration table would
never show. Unless the user chose a level, this extension's logger gets its own console handler at INFO, as
other extensions print their own lines. The host's ``shared`` module is handed in by the script
(``use_host``); nothing here imports a host.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

LOGGER = "gaussian_teleport"
ESTIMATE_TEXT = "Gaussian Teleport: reading moments from the model"
HOST: dict = {}          # "shared": the host's shared module (state, total_tqdm), set by use_host


def shown_elsewhere(record, handler) -> bool:
    """Whether another handler on the record's way up (the host's root handler, …) prints it already."""
    current = logging.getLogger(record.name)
    while current is not None:
        if any(h is not handler and record.levelno >= h.level for h in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False


class ConsoleHandler(logging.Handler):
    """Writes to the current stdout, through tqdm.write while progress bars are drawn (as the host's handler),
    unless another handler prints the line already."""

    def emit(self, record):
        if shown_elsewhere(record, self):
            return
        try:
            text = self.format(record)
            try:
                from tqdm import tqdm
                if getattr(tqdm, "_instances", None):
                    tqdm.write(text, file=sys.stdout)
                    return
            except ImportError:
                pass
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        except Exception:
            self.handleError(record)


def log_level_chosen(cmd_opts=None) -> bool:
    """Whether the user chose the host's log level (``--loglevel`` or ``SD_WEBUI_LOG_LEVEL``)."""
    return bool(getattr(cmd_opts, "loglevel", None) or os.environ.get("SD_WEBUI_LOG_LEVEL"))


def show_log_lines(cmd_opts=None) -> bool:
    """Print this extension's INFO lines in the console unless the user chose a log level; True if it does.

    Once per process (Reload UI runs the script again). With a chosen level the host's own handler decides;
    a line a handler further up prints already (one added later) is not printed twice.
    """
    logger = logging.getLogger(LOGGER)
    if any(isinstance(h, ConsoleHandler) for h in logger.handlers):
        return True
    if log_level_chosen(cmd_opts):
        return False
    handler = ConsoleHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return True


def use_host(shared) -> None:
    """The script hands in the host's ``shared`` module: its console and its progress state."""
    HOST["shared"] = shared
    show_log_lines(getattr(shared, "cmd_opts", None))


def _keep_console_total(shared, state):
    """The console's "Total progress" bar counts sampling steps: make it (if not yet made) before the estimate's
    job is counted, with the total it would have had, so the extra job does not change it."""
    total = getattr(shared, "total_tqdm", None)
    if total is not None and getattr(total, "_tqdm", "unknown") is None and hasattr(total, "updateTotal"):
        total.updateTotal(int(state.job_count) * int(state.sampling_steps))


@contextlib.contextmanager
def estimate_job(total_calls: int):
    """Show reading moments from the model as its own job in the host's progress (``/sdapi/v1/progress``):
    its own text and steps (one per model call), counted as one more job; the sampling job's state comes back
    after it. Yields the core's ``progress(calls_done, calls_total)`` callback (None without a host)."""
    shared = HOST.get("shared")
    state = getattr(shared, "state", None)
    if state is None:
        yield None
        return
    saved = {key: getattr(state, key, None) for key in ("job", "textinfo", "sampling_steps", "sampling_step")}
    counted = isinstance(getattr(state, "job_count", None), int) and state.job_count > 0
    if counted:
        _keep_console_total(shared, state)
        state.job_count += 1
    state.job = state.textinfo = ESTIMATE_TEXT
    state.sampling_steps, state.sampling_step = int(total_calls), 0

    def progress(done, total):
        state.sampling_steps, state.sampling_step = int(total), int(done)

    try:
        yield progress
    finally:
        if counted:
            state.job_no += 1
        for key, value in saved.items():
            setattr(state, key, value)
