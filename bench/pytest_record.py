"""A pytest plugin that writes every result as it arrives, for runs that may be killed.

    python -m pytest -p bench.pytest_record --record-dir DIR [-n 12] ...

- ``DIR/summary.txt``: pytest's ``-rfE`` lines (and skips with their reasons), one per test,
  appended and flushed as each test ends; at the end, or when the run is stopped (SIGTERM
  from ``timeout``, Ctrl-C), the counts and the tests that were still running.
- ``DIR/junit.xml``: the JUnit XML of every result so far, rewritten whole (write, then
  rename) at most once a second and at the end, so a killed run leaves a valid file.

Under pytest-xdist the controller writes both (the workers send it their reports).
"""

from __future__ import annotations

import os
import signal
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

MAX_TEXT = 4000  # characters of a failure's traceback kept in the XML


def pytest_addoption(parser):
    parser.addoption("--record-dir", default=None, help="write summary.txt and junit.xml there as tests end")


def pytest_configure(config):
    folder = config.getoption("--record-dir")
    if folder and not hasattr(config, "workerinput"):  # the controller, or a run without xdist
        config.pluginmanager.register(Recorder(Path(folder)), "fastdrop-recorder")


def _message(report) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):  # (file, line, "Skipped: reason")
        return report.longrepr[2].removeprefix("Skipped: ")
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    return text.strip().splitlines()[0] if text.strip() else ""


class Recorder:
    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.summary = open(folder / "summary.txt", "w", buffering=1)  # line-buffered: each line lands
        self.cases: dict[str, ET.Element] = {}  # nodeid -> <testcase>, in the order tests ended
        self.outcomes: dict[str, str] = {}
        self.running: dict[str, float] = {}  # nodeid -> start time
        self.start = time.time()
        self.written = 0.0
        self.ended = False
        self.previous = signal.signal(signal.SIGTERM, self._terminated)

    # ---- hooks (controller side) ----------------------------------------------------------

    def pytest_runtest_logstart(self, nodeid, location):
        self.running[nodeid] = time.time()

    def pytest_runtest_logreport(self, report):
        nodeid = report.nodeid
        case = self.cases.get(nodeid)
        if case is None:
            path, _, name = nodeid.partition("::")
            case = self.cases[nodeid] = ET.Element("testcase", classname=path.removesuffix(".py").replace("/", "."),
                                                   name=name or path, time="0")
        case.set("time", f"{float(case.get('time')) + report.duration:.3f}")
        outcome = None
        if report.failed:
            outcome = "failed" if report.when == "call" else "error"
        elif hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        elif report.skipped:
            outcome = "skipped"
        if outcome is not None and self.outcomes.get(nodeid) not in ("failed", "error"):
            self.outcomes[nodeid] = outcome
            tag = {"failed": "failure", "error": "error", "skipped": "skipped"}.get(outcome)
            message = _message(report)
            if tag is not None:
                child = ET.SubElement(case, tag, message=message[:500])
                if tag != "skipped":
                    child.text = str(report.longrepr)[-MAX_TEXT:]
            label = {"failed": "FAILED", "error": "ERROR", "skipped": "SKIPPED"}.get(outcome, outcome.upper())
            when = f" ({report.when})" if outcome == "error" else ""
            self.summary.write(f"{label} {nodeid}{when} - {message}\n")
        if report.when == "teardown":
            self.running.pop(nodeid, None)
            self.outcomes.setdefault(nodeid, "passed")
        if time.time() - self.written > 1.0:
            self._write_xml()

    def pytest_collectreport(self, report):
        # A file that fails to import, or (xdist) workers that collected different tests.
        if report.failed:
            self.outcomes[f"collect:{report.nodeid}"] = "error"
            self.summary.write(f"ERROR {report.nodeid or '<session>'} (collection) - {_message(report)}\n")

    def pytest_sessionfinish(self, session, exitstatus):
        self._end(f"exit status {int(exitstatus)}")

    # ---- output -----------------------------------------------------------------------------

    def _counts(self) -> str:
        counts: dict[str, int] = {}
        for outcome in self.outcomes.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        return ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no results"

    def _write_xml(self):
        """Every test that has ended (a test still running has no <testcase> until it ends or
        the run does: then it is an error, the likely hang)."""
        self.written = time.time()
        counts = {k: sum(1 for o in self.outcomes.values() if o == k) for k in ("failed", "error", "skipped")}
        counts["error"] += sum(1 for o in self.outcomes.values() if o == "running")  # written as <error>
        suite = ET.Element("testsuite", name="fastdrop", tests=str(len(self.cases)), failures=str(counts["failed"]),
                           errors=str(counts["error"]), skipped=str(counts["skipped"]),
                           time=f"{self.written - self.start:.1f}")
        suite.extend(case for nodeid, case in self.cases.items() if nodeid in self.outcomes)
        tmp = self.folder / f"junit.xml.{os.getpid()}.tmp"
        root = ET.Element("testsuites")
        root.append(suite)
        ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
        os.replace(tmp, self.folder / "junit.xml")

    def _end(self, why: str):
        if self.ended:
            return
        self.ended = True
        now = time.time()
        for nodeid, started in self.running.items():
            message = f"still running after {now - started:.0f} s when the run ended ({why})"
            self.summary.write(f"RUNNING {nodeid} - {message}\n")
            path, _, name = nodeid.partition("::")
            case = self.cases.setdefault(nodeid, ET.Element(
                "testcase", classname=path.removesuffix(".py").replace("/", "."), name=name or path, time="0"))
            ET.SubElement(case, "error", message=message)
            self.outcomes[nodeid] = "running"
        self._write_xml()
        self.summary.write(f"== {self._counts()} in {now - self.start:.0f} s ({why})\n")
        self.summary.flush()

    def _terminated(self, signum, frame):
        # timeout(1) sends SIGTERM: record what finished and what was running, then stop as
        # Ctrl-C stops pytest (it prints its own summary too).
        self._end("stopped by SIGTERM")
        signal.signal(signal.SIGTERM, self.previous if callable(self.previous) else signal.SIG_DFL)
        raise KeyboardInterrupt


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    recorder = config.pluginmanager.get_plugin("fastdrop-recorder")
    if recorder is not None:
        recorder._end("unconfigured")
        recorder.summary.close()
