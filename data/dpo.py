"""Preference pairs for DPO: converters from MedicalGPT / LLaMA-Factory pairs, hh-rlhf transcripts and
chat-format jsonl to (prompt, chosen, rejected) messages, checked and written as dpo.jsonl and
dpo_val.jsonl (`build_dpo`)."""

import re
import time
from pathlib import Path

from data.clean import VENDOR_CLAIM, SeenBefore, ceval_guard, has_lone_surrogate, is_val, message, normalize
from data.datasets import Skips, check_messages
from data.read import Report, read_json_file, read_jsonl_file, records, write_jsonl
from data.sft import sharegpt_conversations
from model.errors import MiniMindError


def reply(value, key: str) -> tuple[list[dict] | None, str, str]:
    """A chosen/rejected answer given as a string, a {from, value} turn, or a list of messages:
    (messages, '', '') or (None, reason, detail)."""
    if isinstance(value, str):
        return [message("assistant", value)], "", ""
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        return None, f"'{key}' is not a string, turn or list", ""
    if not value:
        return None, f"'{key}' is empty", ""
    messages, reason, detail = sharegpt_conversations(value)
    return messages, reason and f"'{key}': {reason}", detail


def conversation_pairs(path: Path, report: Report):
    """MedicalGPT / LLaMA-Factory: {"conversations": [...], "chosen": str | turn, "rejected": str | turn}."""
    rows = (
        read_jsonl_file(path, report)
        if path.suffix == ".jsonl"
        else records(read_json_file(path, report), path, report)
    )
    for where, row in rows:
        if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row:
            report.skips.add(where, "missing 'chosen' or 'rejected'")
            continue
        prompt, reason, detail = sharegpt_conversations(row.get("conversations"))
        reason = reason and f"'conversations': {reason}"
        parts = [prompt]
        for key in ("chosen", "rejected"):
            if not reason:
                messages, reason, detail = reply(row[key], key)
                parts.append(messages)
        if reason:  # one skip per record, for its first problem
            report.skips.add(where, reason, detail)
            continue
        yield where, *parts


def hh_transcript(text: str) -> list[dict] | None:
    """'\\n\\nHuman: ...\\n\\nAssistant: ...' -> messages; None when it does not follow that shape."""
    parts = re.split(r"\n\n(Human|Assistant): ", "\n\n" + text.lstrip("\n"))
    if parts[0].strip() or len(parts) < 3:
        return None
    return [
        message("user" if role == "Human" else "assistant", content) for role, content in zip(parts[1::2], parts[2::2])
    ]


def hh_rlhf_pairs(path: Path, report: Report):
    """hh-rlhf: two full transcripts that share every turn but the last Assistant reply."""
    for where, row in read_jsonl_file(path, report):
        chosen = (
            hh_transcript(row.get("chosen", ""))
            if isinstance(row, dict) and isinstance(row.get("chosen"), str)
            else None
        )
        rejected = (
            hh_transcript(row.get("rejected", ""))
            if isinstance(row, dict) and isinstance(row.get("rejected"), str)
            else None
        )
        if not chosen or not rejected:
            report.skips.add(where, "not a Human/Assistant transcript")
            continue
        yield where, *split_shared_prefix(chosen, rejected)


def split_shared_prefix(chosen: list[dict], rejected: list[dict]):
    """(prompt, chosen_rest, rejected_rest): the shared leading messages become the prompt."""
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    return chosen[:n], chosen[n:], rejected[n:]


def messages_pairs(path: Path, report: Report):
    """Upstream {"chosen": [messages], "rejected": [messages]}, or ours with an explicit "prompt"."""
    for where, row in read_jsonl_file(path, report):
        if not isinstance(row, dict):
            report.skips.add(where, "line is not a JSON object")
            continue
        reason = ""
        for key in ("prompt", "chosen", "rejected") if "prompt" in row else ("chosen", "rejected"):
            reason = reason or check_messages(row.get(key), key)[0]
        if reason:
            report.skips.add(where, reason)
            continue
        if "prompt" in row:
            yield where, row["prompt"], row["chosen"], row["rejected"]
        else:
            yield where, *split_shared_prefix(row["chosen"], row["rejected"])


DPO_SOURCES = {
    "medicalgpt_dpo_zh": ("dpo/medicalgpt_dpo_zh_500/*.jsonl", conversation_pairs),
    "llamafactory_dpo": ("dpo/llamafactory_demo/*.json", conversation_pairs),
    "hh_rlhf_harmless": ("dpo/hh_rlhf_harmless_base/*.jsonl.gz", hh_rlhf_pairs),
}


def clean_pair(prompt, chosen, rejected, max_chars: int, guard) -> tuple[dict | None, str]:
    """Normalise a preference pair and check it. Returns (row, '') or (None, reason)."""
    if not prompt or prompt[-1]["role"] != "user" or any(m["role"] != "assistant" for m in chosen + rejected):
        return None, "prompt must end with a user turn and the answers be assistant turns"
    if any(has_lone_surrogate(m["content"]) for m in prompt + chosen + rejected):
        return None, "lone UTF-16 surrogate in a string"
    prompt, chosen, rejected = (
        [message(m["role"], normalize(m["content"], prose=False)) for m in part] for part in (prompt, chosen, rejected)
    )
    contents = [m["content"] for m in prompt + chosen + rejected]
    if any(not c or "<s>" in c or "</s>" in c for c in contents):
        return None, "empty message or literal <s>/</s>"
    if chosen == rejected:
        return None, "chosen and rejected are identical"
    if max(sum(len(m["content"]) for m in prompt + side) for side in (chosen, rejected)) > max_chars:
        return None, f"prompt + answer longer than {max_chars} characters"
    if any(VENDOR_CLAIM.search(m["content"]) for m in chosen):
        return None, "chosen reply claims to be another vendor's model"
    if guard and guard.hit("\n".join(m["content"] for m in prompt if m["role"] == "user")):
        return None, "question appears in C-Eval val"
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}, ""


def build_dpo(raw, out, jsonl=(), ceval=None, max_chars=1024, val_fraction=0.05, strict=False, show_skips=3) -> None:
    """Build dpo.jsonl and dpo_val.jsonl in `out` from the built-in pair sources under `raw` plus extra
    {"chosen", "rejected"[, "prompt"]} message files (`jsonl`), without C-Eval val questions."""
    raw_dir = Path(raw)
    inputs = [(name, sorted(raw_dir.glob(pattern)), reader) for name, (pattern, reader) in DPO_SOURCES.items()]
    inputs += [(Path(p).stem, [Path(p)], messages_pairs) for p in jsonl]
    guard = ceval_guard(raw_dir, ceval)
    train, val, seen, reports = [], [], SeenBefore(), []
    start = time.time()
    for name, paths, reader in inputs:
        report = Report(name, skips=Skips(strict, show_skips))
        reports.append(report)
        for path in paths:
            if not path.exists():
                raise MiniMindError(f"{path}: no such file")
            report.files += 1
            for where, prompt, chosen, rejected in reader(path, report):
                row, reason = clean_pair(prompt, chosen, rejected, max_chars, guard)
                if row and seen(row):
                    reason = "exact duplicate"
                if reason:
                    report.skips.add(where, reason)
                    continue
                report.kept += 1
                (val if is_val(row["prompt"][-1]["content"], val_fraction) else train).append(row)
    out = Path(out)
    write_jsonl(out / "dpo.jsonl", train)
    write_jsonl(out / "dpo_val.jsonl", val)
    print(f"dpo: read {sum(r.read for r in reports)}, kept {sum(r.kept for r in reports)} ({time.time() - start:.1f}s)")
    for report in reports:
        print(report.line())
    print(f"  wrote {out / 'dpo.jsonl'}: {len(train)} pairs; {out / 'dpo_val.jsonl'}: {len(val)} pairs")
