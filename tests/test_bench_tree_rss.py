"""bench/tree_rss.py: the summed RSS of a process tree, against the kernel's own per-process peaks."""

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from tree_rss import TreeSampler  # noqa: E402

pytestmark = pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")

# each process holds its block (written, so resident) while the deepest one sleeps, then prints
# its VmHWM, the kernel's peak RSS of that process; the root prints all three
HWM = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])"
GRANDCHILD = f"import time; b = b'\\x01' * (100 << 20); time.sleep(1.5); print({HWM})"
CHILD = (f"import subprocess, sys; b = b'\\x01' * (80 << 20); "
         f"out = subprocess.run([sys.executable, '-c', {GRANDCHILD!r}], capture_output=True, text=True).stdout; "
         f"print({HWM}, out.strip())")
ROOT = (f"import subprocess, sys; b = b'\\x01' * (60 << 20); "
        f"out = subprocess.run([sys.executable, '-c', {CHILD!r}], capture_output=True, text=True).stdout; "
        f"print({HWM}, out.strip())")


def test_tree_peak_counts_children_and_grandchildren():
    proc = subprocess.Popen([sys.executable, "-c", ROOT], stdout=subprocess.PIPE, text=True)
    sampler = TreeSampler(proc.pid, interval=0.02).start()
    out, _ = proc.communicate(timeout=60)
    got = sampler.stop()
    assert proc.returncode == 0
    root_kb, child_kb, grandchild_kb = (int(x) for x in out.split())
    total_mb = (root_kb + child_kb + grandchild_kb) / 1024
    assert got["tree_processes_seen"] == 3 and got["tree_processes_at_peak"] == 3
    # all three held their blocks at once for 1.5 s: the tree's peak is their sum (each RSS is at
    # most its VmHWM; what they held beside the blocks is a few MB each)
    assert 0.95 * total_mb <= got["tree_peak_rss_mb"] <= total_mb + 1
    assert got["tree_peak_rss_mb"] > root_kb / 1024 + 150  # what the root's own peak RSS misses
    assert got["samples"] > 20 and got["mean_interval_s"] < 0.1
