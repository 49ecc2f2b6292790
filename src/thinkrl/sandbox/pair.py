"""`run_pair`: two sandboxed runs that talk to each other only through the parent, line by
line: a *judge* and a *program*. Each is a run exactly like `run_python`'s (its own private
directory, uid slot, namespaces, Landlock, rlimits, audit hook); neither can reach the other's
memory, files or processes. The parent relays:

- the judge's stdout lines that start with `C ` (a request), without that prefix, to the
  program's stdin; every other line of the judge's stdout is the judge's own output (kept as
  its `Execution.stdout`);
- every complete line of the program's stdout to the judge's stdin, after `judge_input`
  (given up front). The program's stdout is relayed, never kept; when the program has ended,
  the judge's stdin is closed (it reads end of file).

So whatever the program writes reaches the judge only as input it reads and judges; only the
judge's stdout carries results. The pair shares one wall clock (`limits.wall_s`); CPU, memory,
the disk quota and the output cap apply to each process. The cap bounds its stderr and the
judge's own output; relayed lines count apart, up to 64 times the cap in all, with no more
than the cap waiting undelivered (else that process is killed: "output_limit"). When the
judge ends, the program's stdin is closed and it gets a moment to exit before it is killed.

    run_pair(judge_code, judge_input, program_code, limits) -> (judge Execution, program Execution)
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from typing import NamedTuple

from . import slots
from .detect import isolation
from .records import DISK_LIMIT, OUTPUT_LIMIT, SANDBOX_ERROR, TIMEOUT, Execution, Limits, checked_inputs
from .spawn import _exited, _finish, _polled_dir, _Run, _start, disk_usage_exceeded, next_disk_poll, read_chunk

_GRACE_S = 0.2  # after the judge ends, how long the program has to exit on its own
_RELAYED = 64  # the lines each side may have relayed, in all, as a multiple of the output cap


class PairJob(NamedTuple):
    judge: str  # the judge's code
    judge_input: str | bytes  # its stdin, before anything the program writes
    program: str  # the program's code
    limits: Limits | None = None
    audit_hook: bool = True


# a pair takes both its uid slots under this lock: a run holding one slot and waiting for a
# second could otherwise wait forever on others doing the same
_pair_slots_lock = threading.Lock()


def run_pair(judge_code: str, judge_input: str | bytes, program_code: str, limits: Limits | None = None, *,
             audit_hook: bool = True) -> tuple[Execution, Execution]:
    """Run the judge and the program together, relaying lines between them (see the module
    docstring). Returns (judge's Execution, program's Execution); the program's stdout is
    empty (relayed, not kept). Never raises for anything either run does. Thread-safe."""
    limits = checked_inputs({"judge_code": judge_code, "program_code": program_code},
                            {"judge_input": judge_input}, limits)
    iso = isolation()
    start = time.monotonic()
    pair = (None, None)
    if iso.dedicated_uids:
        with _pair_slots_lock:
            first = slots._slots.acquire(iso.uids)
            try:
                pair = (first, slots._slots.acquire(iso.uids))
            except BaseException:
                slots._slots.release(*first)
                raise
    hook = bool(audit_hook)
    try:
        judge = _start(judge_code, limits, audit_hook=hook, iso=iso, slot=pair[0], start=start)
    except BaseException:
        judge = None
        raise
    finally:
        if not isinstance(judge, _Run) and pair[1] is not None:
            slots._slots.release(*pair[1])  # the program's slot: it will not start
    if isinstance(judge, Execution):
        return judge, judge
    try:
        program = _start(program_code, limits, audit_hook=hook, iso=iso, slot=pair[1], start=start)
    except BaseException:
        _finish(judge, None)
        raise
    if isinstance(program, Execution):
        _finish(judge, None)
        return program, program
    data = judge_input.encode("utf-8", "surrogateescape") if isinstance(judge_input, str) else bytes(judge_input)
    drove = None
    try:
        drove = _relay(judge, program, data, limits, start)
    finally:
        try:
            judge_ex = _finish(judge, drove and drove[0])
        finally:
            program_ex = _finish(program, drove and drove[1])
    if judge_ex.status == SANDBOX_ERROR or program_ex.status == SANDBOX_ERROR:
        bad = judge_ex if judge_ex.status == SANDBOX_ERROR else program_ex
        return bad, bad  # the pair did not run as it should: neither result means anything
    return judge_ex, program_ex


class _Side:
    """One run's pipes and what the relay has collected from it."""

    def __init__(self, run: _Run):
        self.run, self.pid = run, run.proc.pid
        self.stdin: int | None = run.proc.stdin.fileno()
        self.readers = {run.proc.stdout.fileno(): "out", run.proc.stderr.fileno(): "err"}
        for fd in (self.stdin, *self.readers):
            os.set_blocking(fd, False)
        self.out, self.err, self.partial = bytearray(), bytearray(), bytearray()
        self.pending = bytearray()  # to write to its stdin
        self.total = 0  # stderr and the judge's own output: up to the output cap
        self.relayed = 0  # lines relayed to the other side: up to _RELAYED times the cap
        self.verdict: str | None = None
        self.exited_at: float | None = None
        self.disk_dir = _polled_dir(run.iso, run.tmp)  # where no tmpfs bounds the disk quota

    def finished(self, now: float) -> bool:
        if self.verdict is not None:
            return True
        return self.exited_at is not None and (not self.readers or now - self.exited_at > 0.1)

    def close_stdin(self) -> None:
        if self.stdin is not None:
            self.pending.clear()
            try:
                self.run.proc.stdin.close()
            except OSError:
                pass
            self.stdin = None

    def kill(self, verdict: str) -> None:
        self.verdict = verdict
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass
        self.close_stdin()

    def collected(self) -> tuple[bytes, bytes, str | None]:
        return bytes(self.out), bytes(self.err), self.verdict


def _relay(judge_run: _Run, program_run: _Run, data: bytes, limits: Limits, start: float):
    """The pair's driver: ((judge stdout, stderr, verdict), (program's, with an empty stdout))."""
    judge, program = _Side(judge_run), _Side(program_run)
    judge.pending += data
    deadline, cap = start + limits.wall_s, limits.max_output_bytes
    judge_done_at, next_poll, next_exit_check, idle = None, 0.0, 0.0, True
    while True:
        now = time.monotonic()
        if idle or now >= next_exit_check:  # not on every relayed line: a system call each
            next_exit_check = now + 0.005
            for side in (judge, program):
                if side.exited_at is None and _exited(side.pid):
                    side.exited_at = now
        if program.finished(now):
            program.close_stdin()
            if judge.stdin is not None and not judge.pending:
                judge.close_stdin()  # everything the program said is delivered: end of file
        if judge_done_at is None and judge.finished(now):
            judge_done_at = now
            program.close_stdin()
        if judge.verdict is not None or (judge_done_at is not None and (
                program.finished(now) or now - judge_done_at > _GRACE_S)):
            break
        if now >= deadline:
            for side in (judge, program):
                if not side.finished(now):
                    side.verdict = TIMEOUT
            break
        if now >= next_poll:
            for side in (judge, program):
                if side.disk_dir is not None and side.exited_at is None and side.verdict is None and \
                        disk_usage_exceeded(side.disk_dir, limits.max_disk_mb * 2 ** 20):
                    side.kill(DISK_LIMIT)
            next_poll = next_disk_poll(now)
            if judge.verdict is not None:
                continue
        poll = select.poll()
        fds = {}
        for side in (judge, program):
            if side.verdict is not None:
                continue
            for fd in side.readers:
                poll.register(fd, select.POLLIN)
                fds[fd] = side
            if side.stdin is not None and side.pending:
                poll.register(side.stdin, select.POLLOUT)
                fds[side.stdin] = side
        if not fds:
            time.sleep(min(0.005, max(deadline - now, 0)))
            continue
        if any(not side.readers and side.exited_at is None for side in (judge, program)):
            wait_s = 0.005  # its pipes are closed: it is about to be gone
        elif judge.exited_at is not None or program.exited_at is not None or judge.disk_dir is not None:
            wait_s = 0.02
        else:
            wait_s = 0.1
        if any(side.disk_dir is not None and side.exited_at is None for side in (judge, program)):
            wait_s = min(wait_s, next_poll - now)  # a silent writer is polled on time too
        wait_s = min(deadline - now, wait_s)
        events = poll.poll(max(wait_s, 0) * 1000)
        idle = not events
        for fd, _ in events:
            side = fds[fd]
            if side.verdict is not None:
                continue
            if fd == side.stdin:
                _write(side)
                continue
            chunk = read_chunk(fd)
            if chunk is None:
                continue
            if not chunk:
                del side.readers[fd]
                idle = True  # a pipe closed: see whether its process has ended
                continue
            if side.readers[fd] == "err":
                side.total += len(chunk)
                side.err += chunk
            else:
                _lines(side, chunk, judge, program)
            other = program if side is judge else judge
            if side.total > cap or side.relayed > _RELAYED * cap or len(side.partial) > cap or \
                    len(other.pending) > cap:
                side.kill(OUTPUT_LIMIT)
    for side in (judge, program):
        side.close_stdin()
    return judge.collected(), program.collected()


def _write(side: _Side) -> None:
    try:
        n = os.write(side.stdin, side.pending[:65536])
        del side.pending[:n]
    except BlockingIOError:
        pass
    except OSError:  # the reader is gone
        side.close_stdin()


def _lines(side: _Side, chunk: bytes, judge: _Side, program: _Side) -> None:
    """Route the complete lines of a chunk of `side`'s stdout; keep the unfinished rest."""
    side.partial += chunk
    end = side.partial.rfind(b"\n")
    if end < 0:
        return
    lines, side.partial = bytes(side.partial[:end + 1]), side.partial[end + 1:]
    if side is program:
        program.relayed += len(lines)
        if judge.stdin is not None:
            judge.pending += lines
        return
    for line in lines[:-1].split(b"\n"):
        line += b"\n"
        if line.startswith(b"C "):
            judge.relayed += len(line)
            if program.stdin is not None:
                program.pending += line[2:]
        else:
            judge.total += len(line)
            judge.out += line
