"""The non-reasoning mix of R1 stage 3 (about 200k general samples beside the ~600k reasoning
ones): general rows read from JSONL with their provenance, and drawn at a ratio to the kept
reasoning rows, seeded."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from ..data import DataError

log = logging.getLogger("thinkrl.pipeline")


def load_general(path: str) -> list[dict]:
    """Non-reasoning rows {prompt, response, type, source, other columns}: each line an object
    with `prompt` (or `question`) and `response`; `type` defaults to "general"; the source is
    the file and line. Bad lines raise DataError with file:line."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file (mix.data)")
    out = []
    with p.open(encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{p}:{lineno}: each line must be a JSON object")
            prompt = row.get("prompt", row.get("question"))
            response = row.get("response")
            if not isinstance(prompt, str) or not prompt.strip() or not isinstance(response, str) or not response.strip():
                raise DataError(f"{p}:{lineno}: a non-reasoning row needs a non-empty 'prompt' (or 'question') and "
                                f"'response' (fields present: {sorted(row)})")
            source = {"data": str(p), "line": lineno}
            if "source" in row:
                source["origin"] = row["source"]
            extra = {k: v for k, v in row.items() if k not in ("prompt", "question", "response", "type", "source")}
            out.append({"prompt": prompt, "response": response, "type": row.get("type", "general"), **extra,
                        "source": source})
    if not out:
        raise DataError(f"{p}: no non-reasoning rows (mix.data)")
    return out


def mix(kept: list[dict], general: list[dict], ratio: float, seed: int) -> tuple[list[dict], dict]:
    """round(ratio × len(kept)) rows drawn from `general` without replacement (all of them,
    with a warning, when there are too few), joined to `kept` and shuffled; both with `seed`."""
    rng = random.Random(seed)
    wanted = round(ratio * len(kept))
    take = min(wanted, len(general))
    if take < wanted:
        log.warning("mix: wanted %d non-reasoning rows (ratio %.3g × %d kept) but only %d are available; using all",
                    wanted, ratio, len(kept), len(general))
    chosen = rng.sample(general, take) if take else []
    rows = kept + chosen
    rng.shuffle(rows)
    return rows, {"reasoning": len(kept), "general_wanted": wanted, "general_available": len(general),
                  "general": take, "short_by": wanted - take}
