"""SFT data: rows (JSONL, or any source of thinkrl.data_sources) -> token ids with a loss
mask -> (packed) batches.

A sample is `(input_ids, labels)`, two lists of the same length. `labels[t]` is the token
the model must predict at position t (so the logits at t-1 are scored, the Hugging Face
convention), or IGNORE (-100) where no loss is taken: the prompt, the chat template's
scaffolding, the user turns. The first token of a sample is never a target (nothing
precedes it), which also keeps packed samples from predicting across their boundary.

Two row formats:
- `{"prompt": str, "response": str}`: the prompt rendered by data.template
  (`thinkrl.template.render`); prompt and response tokenized separately and concatenated,
  EOS appended to the response, so the mask boundary is exactly the prompt/response one
  and generation later starts from the same prompt ids. Other columns are ignored.
- `{"messages": [{"role", "content"}, ...]}`: rendered by the tokenizer's chat template;
  loss on the assistant turns only (content and the template's end-of-turn text). Each
  assistant turn is located by rendering the conversation up to it (with the generation
  prompt) and through it: the difference is the turn. Segments are tokenized separately.

Text is always tokenized here (never pre-tokenized ids), so a distillation student with
its own tokenizer trains on the teacher's text.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import DataError, read_records
from ..data_sources import FORMATS
from ..template import render

log = logging.getLogger("thinkrl")

IGNORE = -100
Sample = tuple[list[int], list[int]]  # (input_ids, labels)


# ---------------------------------------------------------------------------- rows


def _check_row(row, d) -> str | None:
    """Why a parsed line is not a usable row (None if it is). A null messages field counts as
    absent: a table (parquet, a Dataset) holding both formats gives every row every column."""
    if not isinstance(row, dict):
        return "each line must be a JSON object"
    if row.get(d.messages_field) is not None:
        msgs = row[d.messages_field]
        if not isinstance(msgs, list) or not msgs:
            return f"{d.messages_field!r} must be a non-empty list of {{role, content}} objects"
        for m in msgs:
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                return (f"every entry of {d.messages_field!r} needs a string 'role' and a string 'content', "
                        f"got {m!r:.80}")
        if not any(m["role"] == "assistant" for m in msgs):
            return f"{d.messages_field!r} has no assistant turn, so there is nothing to learn"
        return None
    for name, what in ((d.prompt_field, "prompt"), (d.response_field, "response")):
        if name not in row:
            return (f"missing field {name!r} (fields present: {sorted(row)}); set data.{what}_field to map your "
                    f"columns, or give conversations under data.messages_field ({d.messages_field!r})")
        if not isinstance(row[name], str):
            return f"field {name!r} must be a string, got {type(row[name]).__name__}"
    return None


def read_rows(path: str | Path, d, split: str | None = None) -> tuple[list[dict], int]:
    """(rows, number of bad rows skipped) from any source `thinkrl.data.read_records` reads
    (JSONL, JSON, parquet, a save_to_disk directory, hf:ID). Rows are normalised to
    {"prompt", "response", "line"} or {"messages", "line"} ("line": the line, or row number
    from 1). A bad row raises DataError naming the source and line or row, or with
    d.on_bad_row == "skip" is skipped and counted. `split` (of a hub dataset or a saved
    DatasetDict whose spec names none): by default "test" for data.eval, else "train"."""
    if split is None:
        split = "test" if path == d.eval and path != d.train else "train"
    lines, skipped = read_records(path, lambda row: _check_row(row, d), d.on_bad_row, empty="no usable rows",
                                  what=f"data.train / data.eval: {FORMATS}", split=split)
    rows = [{"messages": row[d.messages_field], "line": n} if row.get(d.messages_field) is not None else
            {"prompt": row[d.prompt_field], "response": row[d.response_field], "line": n} for n, row in lines]
    return rows, skipped


def split_rows(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out): a seeded `fraction` of the rows held out (at least one row)."""
    if fraction <= 0:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(rows) * fraction))
    if n_eval >= len(rows):
        raise DataError(f"data.eval_fraction={fraction} leaves no training rows out of {len(rows)}; lower it")
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


# ---------------------------------------------------------------------------- tokenizing


def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def _sample(pieces: list[tuple[list[int], bool]]) -> Sample:
    """Concatenate (ids, trained?) pieces into (input_ids, labels)."""
    ids, labels = [], []
    for piece, trained in pieces:
        ids += piece
        labels += piece if trained else [IGNORE] * len(piece)
    if labels:
        labels[0] = IGNORE  # nothing precedes the first token
    return ids, labels


def encode_prompt_response(prompts: list[str], responses: list[str], tokenizer, template: str) -> list[Sample]:
    """Samples for {prompt, response} rows: render(prompt) ++ response ++ EOS, loss on the
    response and EOS."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no EOS token, so a response cannot be ended; set model.tokenizer to one "
                        "that has eos_token")
    try:
        rendered = [render(p, template, tokenizer) for p in prompts]
    except ValueError as e:
        raise DataError(f"data.template={template!r}: {e}") from None
    return [_sample([(p, False), (r + [eos], True)])
            for p, r in zip(_ids(tokenizer, rendered), _ids(tokenizer, responses))]


def _chat(tokenizer, messages, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


NO_CHAT_TEMPLATE = ("rows in the messages format need a tokenizer with a chat template, and this one has none; "
                    "set model.tokenizer to a tokenizer with a chat_template, or give rows as {prompt, response} "
                    "rendered by data.template (r1_zero, none, or a string with {prompt})")


def encode_messages(messages: list[dict], tokenizer) -> Sample:
    """A sample for one conversation, loss on the assistant turns only (see module docstring)."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(NO_CHAT_TEMPLATE)
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
    texts, done = [], ""  # (text, trained?) segments; `done` is the text covered so far
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = _chat(tokenizer, msgs[:i], True) if i else ""
        through = _chat(tokenizer, msgs[: i + 1], False)
        if not (before.startswith(done) and through.startswith(before)):
            raise DataError("the chat template renders earlier turns differently once later turns follow (it may "
                            "drop or rewrite past assistant turns), so assistant turns cannot be located exactly; "
                            "give one assistant turn per row, or {prompt, response} rows")
        texts += [(before[len(done):], False), (through[len(before):], True)]
        done = through
    full = _chat(tokenizer, msgs, False)
    if full.startswith(done) and len(full) > len(done):
        texts.append((full[len(done):], False))
    pieces = _ids(tokenizer, [t for t, _ in texts])
    return _sample([(ids, trained) for ids, (_, trained) in zip(pieces, texts)])


def encode_rows(rows: list[dict], tokenizer, template: str, max_length: int, on_bad_row: str = "error",
                source: str = "") -> tuple[list[Sample], dict]:
    """Samples for rows of either format, and counts of what was skipped: {"too_long": n,
    "bad_rows": n} (samples longer than max_length tokens, rows the chat template rejects)."""
    encoded: list[Sample | None] = [None] * len(rows)
    pr = [i for i, r in enumerate(rows) if "messages" not in r]
    for i, sample in zip(pr, encode_prompt_response([rows[i]["prompt"] for i in pr], [rows[i]["response"] for i in pr],
                                                    tokenizer, template)):
        encoded[i] = sample
    chats = [i for i, r in enumerate(rows) if "messages" in r]
    if chats and not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{source}:{rows[chats[0]].get('line', '?')}: {NO_CHAT_TEMPLATE}")
    bad = 0
    for i in chats:
        try:
            encoded[i] = encode_messages(rows[i]["messages"], tokenizer)
        except Exception as e:  # DataError, or a template that raises (e.g. it requires alternating roles)
            why = str(e) if isinstance(e, DataError) else f"the chat template failed on this conversation ({e})"
            if on_bad_row != "skip":
                raise DataError(f"{source}:{rows[i].get('line', '?')}: {why}; or set data.on_bad_row=skip") from None
            bad += 1
    samples, too_long = [], 0
    for s in encoded:
        if s is None:
            continue
        if len(s[0]) > max_length:
            too_long += 1
            continue
        if not any(t != IGNORE for t in s[1]):
            bad += 1  # nothing to learn (an empty assistant turn as the first token)
            continue
        samples.append(s)
    if too_long:
        log.warning("%s: skipped %d of %d samples longer than data.max_length=%d tokens", source, too_long,
                    len(rows), max_length)
    return samples, {"too_long": too_long, "bad_rows": bad}


# ---------------------------------------------------------------------------- batches


@dataclass
class Batch:
    """Rows of samples for one forward pass. `boundaries[r]` lists (sample index, start,
    end) of the samples in row r; position ids restart at 0 at every sample start, which
    is how transformers (>= 4.53, `masking_utils.find_packed_sequence_indices`) knows to
    keep attention inside each sample (a block-diagonal causal mask) when no 2D attention
    mask is given. Padding is right of the samples and never attended to by them."""

    input_ids: torch.Tensor  # [R, L]
    labels: torch.Tensor  # [R, L], IGNORE on prompts and padding
    position_ids: torch.Tensor  # [R, L]
    boundaries: list[list[tuple[int, int, int]]]
    n_tokens: int  # real (not padding) tokens
    prefix_len: int = 0  # tokens every row starts with and takes no loss on (run once; see pad_batch)

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), self.labels.to(device), self.position_ids.to(device),
                     self.boundaries, self.n_tokens, self.prefix_len)


def _layout(samples: list[Sample], rows: list[list[int]], pad_id: int, packed: bool) -> Batch:
    L = max(sum(len(samples[i][0]) for i in row) for row in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), L), IGNORE, dtype=torch.long)
    # padding: its own one-token segments at position 0 when packed (never past the model's
    # context); the continuation of the sample's positions otherwise (no mask needed at all)
    pos = torch.zeros((len(rows), L), dtype=torch.long) if packed else torch.arange(L).repeat(len(rows), 1)
    bounds = []
    for r, row in enumerate(rows):
        start, b = 0, []
        for i in row:
            x, y = samples[i]
            end = start + len(x)
            ids[r, start:end] = torch.tensor(x)
            labels[r, start:end] = torch.tensor(y)
            pos[r, start:end] = torch.arange(len(x))
            b.append((i, start, end))
            start = end
        bounds.append(b)
    return Batch(ids, labels, pos, bounds, sum(len(s[0]) for s in samples))


def pack(samples: list[Sample], pack_length: int, pad_id: int = 0) -> Batch:
    """Samples packed several to a row of at most `pack_length` tokens, by first-fit
    decreasing (longest first, each into the first row with room), rows right-padded to the
    longest. Per-sample boundaries in `Batch.boundaries`; position ids restart per sample."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(samples)), key=lambda i: -len(samples[i][0])):
        n = len(samples[i][0])
        if n > pack_length:
            raise ValueError(f"a sample of {n} tokens does not fit train.pack_length={pack_length}")
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(pack_length - n)
    return _layout(samples, rows, pad_id, packed=True)


def shared_prefix_len(samples: list[Sample]) -> int:
    """The number of leading tokens every sample has in common and is not scored on (the
    prompt template's head), leaving each sample at least one token after it."""
    from ..policy import common_prefix_len

    first_target = min(next(t for t, y in enumerate(labels) if y != IGNORE) for _, labels in samples)
    return min(common_prefix_len([ids for ids, _ in samples]), first_target)  # the logits at n-1 may predict a target


def pad_batch(samples: list[Sample], pad_id: int = 0, share_prefix: bool = False, min_prefix: int = 8) -> Batch:
    """One sample per row, right-padded to the longest (the unpacked layout). share_prefix:
    record the common unscored prefix (at least `min_prefix` tokens, two samples or more) so
    that the forward pass runs it once for all rows (`thinkrl.train.sft.batch_nll`)."""
    batch = _layout(samples, [[i] for i in range(len(samples))], pad_id, packed=False)
    if share_prefix and len(samples) > 1:
        n = shared_prefix_len(samples)
        batch.prefix_len = n if n >= min_prefix else 0
    return batch
