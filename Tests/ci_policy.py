"""Under CI (the CI environment variable set), a skipped test is a failure: a test that
could not run proves nothing, and a green run must mean every test ran. The one exception is
a test parametrised over an interpreter that is not installed on the machine: its skip
reason starts with INTERPRETER_ABSENT, and all such skips are listed in one summary line.

Each test directory's conftest.py hands its reports to ``enforce`` and its terminal
summary to ``summarize`` (pytest takes hooks from conftest modules by name).
"""

import os

INTERPRETER_ABSENT = "interpreter not installed here"

_absent = []


def enforce(item, rep):
    """Turn a skip under CI into a failure (in place), except an absent interpreter."""
    if not os.environ.get("CI") or not rep.skipped or hasattr(rep, "wasxfail"):
        return
    reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
    if reason.startswith("Skipped: "):
        reason = reason[len("Skipped: "):]
    if reason.startswith(INTERPRETER_ABSENT):
        _absent.append(item.nodeid)
        return
    rep.outcome = "failed"
    rep.longrepr = "skipped under CI, which counts as a failure: %s" % reason


def summarize(terminalreporter):
    if _absent:
        terminalreporter.write_line("skipped for interpreters absent from this machine (%d): %s"
                                    % (len(_absent), ", ".join(_absent)))
