"""Importing a user's reward module (`package.module:function`), bounded and contained.

A user's module is arbitrary code that runs when imported. Before the training (or scoring)
process imports it, a throw-away interpreter imports it first, with a time limit, so that a
module that blocks at import (a sleep, a download, a prompt for input) or ends the process
(`os._exit`, `sys.exit`, a crash) is reported as a clear error instead of hanging the run or
ending it with no message. Only then is the module imported here, where an exception (or a
`SystemExit`) it raises becomes the same kind of error: `ValueError`, naming the module.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import tempfile

_IMPORTED_OK = 86  # the trial interpreter's exit code when the import returned normally
_TRIAL = """
import importlib, os, sys
try:
    importlib.import_module(sys.argv[1])
except SystemExit as e:
    sys.stderr.write("\\nthinkrl-trial: exit sys.exit(%r)\\n" % (e.code,))
    sys.stderr.flush()
    os._exit(3)
except BaseException as e:
    sys.stderr.write("\\nthinkrl-trial: raised %s: %s\\n" % (type(e).__name__, e))
    sys.stderr.flush()
    os._exit(3)
os._exit(IMPORTED_OK)
""".replace("IMPORTED_OK", str(_IMPORTED_OK))

_tried: set[str] = set()  # modules whose trial import succeeded in this process


def _trial_import(module: str, name: str, timeout_s: float) -> None:
    """Imports `module` in a fresh interpreter within `timeout_s` seconds; ValueError saying
    what went wrong otherwise."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-c", _TRIAL, module], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the module's own children too
            except OSError:
                proc.kill()
            proc.wait()
            raise ValueError(f"importing the module {module!r} of reward {name!r} took longer than {timeout_s:g} s "
                             "(the reward's time limit); a reward module must not block when imported: move slow "
                             "work into the reward function, or raise rewards.timeout_s (thinkrl score: --timeout)"
                             ) from None
        err.seek(0)
        lines = err.read().decode("utf-8", "replace").strip().splitlines()
    said = lines[-1] if lines else ""
    if code == _IMPORTED_OK:
        return
    if said.startswith("thinkrl-trial: raised "):
        raise ValueError(f"cannot import reward {name!r}: importing {module!r} {said[len('thinkrl-trial: '):]}")
    how = said[len("thinkrl-trial: exit "):] if said.startswith("thinkrl-trial: exit ") else (
        f"was killed by signal {-code}" if code < 0 else f"exited with code {code}")
    raise ValueError(f"the reward module {module!r} (reward {name!r}) exited during import ({how}); a reward "
                     "module must not end the process when imported")


def import_reward_module(module: str, name: str, timeout_s: float | None = None):
    """The module of a user's reward. With `timeout_s`, a trial import in a fresh interpreter
    comes first (once per module and process). ValueError for any failure to import."""
    if timeout_s is not None and module not in sys.modules and module not in _tried:
        _trial_import(module, name, timeout_s)
        _tried.add(module)
    try:
        return importlib.import_module(module)
    except SystemExit as e:
        raise ValueError(f"the reward module {module!r} (reward {name!r}) exited during import "
                         f"(sys.exit({e.code!r})); a reward module must not end the process when imported") from None
    except Exception as e:  # ImportError, or whatever the module's own code raised
        raise ValueError(f"cannot import reward {name!r}: {type(e).__name__}: {e}") from None
