"""Training datasets: pretraining token shards, chat conversations (SFT) and preference pairs (DPO).

Files they read (written by `data_process.py`, all under dataset/ by default):

    dataset/pretrain/meta.json         sidecar: dtype, tokenizer hash, eos id, tokens and docs per shard
    dataset/pretrain/train_0000.bin    raw uint16 token ids, documents joined by </s> (id 2), no header
    dataset/pretrain/train_0001.bin    ... as many shards as the corpus needs
    dataset/pretrain/val_0000.bin      held-out documents; no training window ever reads them
    dataset/sft_single.jsonl           {"conversations": [{"role": "user"|"assistant"|"system", "content": str}, ...]}
    dataset/sft_multi.jsonl            same format, several turns each
    dataset/sft_val.jsonl              held-out conversations, same format
    dataset/lora_identity.jsonl        same format: self-introduction chats for the LoRA stage
    dataset/lora_medical.jsonl         same format: patient/doctor chats for the LoRA stage
    dataset/dpo.jsonl                  {"prompt": [messages], "chosen": [messages], "rejected": [messages]}
    dataset/dpo_val.jsonl              held-out pairs, same format

Every dataset yields targets already aligned with the inputs (nanoGPT style): y[i] is the token the
model must predict after reading x[: i + 1], and -100 marks positions without a target. Pass y as
`shift_labels=` to MiniMindForCausalLM.forward.

    PretrainDataset  (x, y)   windows of seq_len tokens; y is x shifted by one
    SFTDataset       (x, y)   y is -100 except on assistant tokens (each reply's content and its </s>)
    DPODataset       dict     chosen_x/chosen_y/rejected_x/rejected_y, y = -100 outside the final reply
"""

import gzip
import re
import reprlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from model.errors import MiniMindError, first_line
from model.jsonfile import parse_json, read_json_object
from model.model import IGNORE, SharedPrompts  # IGNORE: the target that counts nothing (-100), re-exported for callers
from model.chat import encode_messages, turn_header
from model.tokenizer import EOS_ID, PAD_ID
from model.toolcall import plain_messages

ROLES = ("system", "user", "assistant", "tool")


# ----------------------------------------------------------------------------- pretraining


def read_meta(meta_path) -> dict:
    """The pretraining sidecar meta.json, checked: a dict with a token dtype data_process.py writes and a
    `shards` dict of {"train_NNNN.bin" | "val_NNNN.bin": {"tokens": count}}. Anything else raises a
    MiniMindError naming the file and the field."""
    meta_path = Path(meta_path)
    meta = read_json_object(meta_path, fix="; rebuild it with `python data_process.py pretrain`")
    if meta.get("dtype") not in ("uint16", "uint32"):
        raise MiniMindError(f"{meta_path}: 'dtype' must be \"uint16\" or \"uint32\", found {reprlib.repr(meta.get('dtype'))}")
    shards = meta.get("shards")
    if not isinstance(shards, dict):
        raise MiniMindError(f"{meta_path}: 'shards' must be an object of shard name -> {{\"tokens\": count}}")
    for name, info in shards.items():
        if not re.fullmatch(r"(train|val)_\d{4,}\.bin", name):
            raise MiniMindError(f"{meta_path}: shard name {reprlib.repr(name)} is not train_NNNN.bin or val_NNNN.bin")
        tokens = info.get("tokens") if isinstance(info, dict) else None
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            raise MiniMindError(f"{meta_path}: shards.{name}.tokens must be a token count, found {reprlib.repr(tokens)}")
    vocab = meta.get("vocab_size")
    if vocab is not None and (not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1):
        raise MiniMindError(f"{meta_path}: 'vocab_size' must be a positive integer, found {reprlib.repr(vocab)}")
    return meta


class PretrainDataset(Dataset):
    """Non-overlapping windows over memory-mapped uint16 token shards.

    Window j of a shard covers tokens [j*seq_len, j*seq_len + seq_len] (seq_len + 1 tokens), so
    x = window[:-1] and y = window[1:]. Windows never cross a shard boundary (a shard loses fewer
    than seq_len tokens at its end). Documents are separated by </s>; a window may span several.

    Exact resume: `dataset[i]` depends only on i, and `EpochSampler` below orders the indices by a
    permutation drawn from (seed, epoch). A run that stopped after consuming `k` samples of epoch `e`
    resumes with `sampler.set_epoch(e, skip=k)` and sees exactly the samples it would have seen.
    """

    def __init__(self, data_dir, seq_len: int, split: str = "train", tokenizer_hash: str = None):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.data_dir = Path(data_dir)
        self.seq_len = seq_len
        meta_path = self.data_dir / "meta.json"
        if not meta_path.exists():
            raise MiniMindError(f"{meta_path} not found: build the corpus with `python data_process.py pretrain` first")
        self.meta = read_meta(meta_path)
        if tokenizer_hash and self.meta.get("tokenizer_hash") != tokenizer_hash:
            raise MiniMindError(
                f"{self.data_dir} was tokenized with tokenizer {self.meta.get('tokenizer_hash')}, but the current one is "
                f"{tokenizer_hash}: rebuild it with `python data_process.py pretrain`"
            )
        self.dtype = np.dtype(self.meta["dtype"])
        self.paths, starts = [], [0]  # starts[k] = index of shard k's first window
        for name, info in sorted(self.meta["shards"].items()):
            if not name.startswith(split + "_"):
                continue
            path = self.data_dir / name
            expected = info["tokens"] * self.dtype.itemsize
            if not path.is_file() or path.stat().st_size != expected:
                found = f"{path.stat().st_size} bytes" if path.is_file() else "no file"
                raise MiniMindError(
                    f"{path}: expected {expected} bytes ({info['tokens']} tokens) per meta.json, found {found}"
                )
            self.paths.append(path)
            starts.append(starts[-1] + max(0, (info["tokens"] - 1) // seq_len))
        if not self.paths:
            raise MiniMindError(f"{self.data_dir}: no {split}_*.bin shards listed in meta.json")
        self.starts = np.array(starts)
        if len(self) == 0:
            raise MiniMindError(f"{self.data_dir}: the {split} split has fewer than seq_len + 1 = {seq_len + 1} tokens")
        self._maps = None  # opened on first use in each process, so DataLoader workers never pickle the data

    def __getstate__(self):
        return {**self.__dict__, "_maps": None}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)
        shard = int(np.searchsorted(self.starts, index, side="right")) - 1
        offset = (index - int(self.starts[shard])) * self.seq_len
        if self._maps is None:
            self._maps = [np.memmap(path, dtype=self.dtype, mode="r") for path in self.paths]
        window = torch.from_numpy(self._maps[shard][offset : offset + self.seq_len + 1].astype(np.int64))
        return window[:-1], window[1:]


# ----------------------------------------------------------------------------- chat data


class Skips:
    """Counts skipped records by reason. The first few of each reason are printed with their
    file:line; with strict=True the first one stops the program instead."""

    def __init__(self, strict: bool = False, show: int = 3):
        self.strict, self.show = strict, show
        self.counts: dict[str, int] = {}

    def add(self, where: str, reason: str, detail: str = "") -> None:
        message = f"{where}: {reason}" + (f" ({detail})" if detail else "")
        if self.strict:
            raise MiniMindError(f"error: {message} [--strict stops at the first problem]")
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if self.counts[reason] <= self.show:
            print(f"warning: {message}; skipped")

    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        return ", ".join(f"{n} {why}" for why, n in sorted(self.counts.items(), key=lambda kv: -kv[1]))


def read_jsonl(path, skips: Skips):
    """Yield (line_number, object) for each usable line of a jsonl file (a .gz file is read through gzip).
    Every other line goes to `skips` with its file:line: blank, not UTF-8, not JSON, nested too deeply, a
    number too long, a lone surrogate. So lines in the file = lines yielded + skips added."""
    path = Path(path)
    if not path.exists():
        raise MiniMindError(f"{path} not found: build it with `python data_process.py` (see dataset/README.md)")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        f = opener(path, "rb")
    except OSError as error:
        raise MiniMindError(f"{path}: cannot read it ({error.strerror or first_line(error)})")
    with f:
        try:
            for number, raw in enumerate(f, 1):
                where = f"{path}:{number}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    skips.add(where, "not valid UTF-8", f"byte {error.start}")
                    continue
                if not line.strip():
                    skips.add(where, "blank line")
                    continue
                row, reason, detail = parse_json(line)
                if reason:
                    skips.add(where, reason, detail)
                    continue
                yield number, row
        except (OSError, EOFError) as error:  # a directory, a truncated or corrupt .gz
            raise MiniMindError(f"{path}: cannot read it ({first_line(error)})")


def check_messages(messages, field: str) -> tuple[str, str]:
    """(reason, detail) saying why `messages` is not a non-empty list of {role, content}; ('', '') if it is."""
    if not isinstance(messages, list) or not messages:
        return f"'{field}' missing or not a non-empty list", ""
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            return f"a message in '{field}' has no string 'content'", f"{field}[{i}]"
        if message.get("role") not in ROLES:
            return f"a message in '{field}' has an unknown role", f"{field}[{i}].role = {reprlib.repr(message.get('role'))}"
    return "", ""


def conversation_of(row) -> tuple[list | None, str, str]:
    """(messages, '', '') for an SFT record {"conversations": [...], "tools"?: [...]}, the messages plain
    (tools offered in the system turn, assistant tool calls written as call blocks); or (None, reason,
    detail) saying what is wrong with it."""
    if not isinstance(row, dict):
        return None, "'conversations' missing or not a non-empty list", ""
    messages, tools = row.get("conversations"), row.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(tool, dict) for tool in tools)):
        return None, "'tools' is not a list of tool schemas", ""
    if isinstance(messages, list) and all(isinstance(m, dict) for m in messages):
        try:
            messages = plain_messages(messages, tools)
        except ValueError as error:
            return None, "a malformed tool call", str(error)
    reason, detail = check_messages(messages, "conversations")
    return (None, reason, detail) if reason else (messages, "", "")


class ChatEncoder:
    """Tokenizes messages turn by turn in the chat template's layout, marking which tokens are targets.

    Each message is `<s>{role}\\n` + content + `</s>` + `\\n`, encoded by model/chat.py's encode_messages,
    exactly as at inference, where the prompt ends in `<s>assistant\\n` and the model continues from there.
    For a target message, the content tokens and its `</s>` are targets; the header and trailing newline
    never are. Messages are plain {role, content} (model/toolcall.plain_messages folds tools and calls in).
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.header_len = {role: len(turn_header(tokenizer, role)) for role in ROLES}
        self.newline_len = len(tokenizer.encode("\n", add_special_tokens=False))

    def encode(self, messages, is_target) -> tuple[list[int], list[bool]]:
        """`is_target(i, message)` decides which messages are learned."""
        ids, mask = [], []
        for i, (message, turn) in enumerate(zip(messages, encode_messages(self.tokenizer, messages))):
            head, tail = self.header_len[message["role"]], self.newline_len
            ids += turn
            mask += [False] * head + [is_target(i, message)] * (len(turn) - head - tail) + [False] * tail
        return ids, mask


def shift_and_truncate(ids: list[int], mask: list[bool], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x = ids[:-1], y = ids[1:] with -100 where the predicted token is not a target; at most seq_len long.
    The mask is computed before truncation, so cutting the end never turns a prompt token into a target."""
    ids, mask = ids[: seq_len + 1], mask[: seq_len + 1]
    x = torch.tensor(ids[:-1], dtype=torch.long)
    y = torch.tensor([t if m else IGNORE for t, m in zip(ids[1:], mask[1:])], dtype=torch.long)
    return x, y


class _PackedTokens:
    """Variable-length (ids, mask) sequences stored in two flat arrays, so large files stay compact."""

    def __init__(self):
        self.ids, self.mask, self.offsets = [], [], [0]

    def add(self, ids, mask):
        self.ids.append(np.asarray(ids, dtype=np.int32))
        self.mask.append(np.asarray(mask, dtype=np.bool_))
        self.offsets.append(self.offsets[-1] + len(ids))

    def freeze(self):
        self.ids = np.concatenate(self.ids) if self.ids else np.zeros(0, np.int32)
        self.mask = np.concatenate(self.mask) if self.mask else np.zeros(0, np.bool_)
        self.offsets = np.array(self.offsets, dtype=np.int64)

    def __len__(self):
        return len(self.offsets) - 1

    def __getitem__(self, i):
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.ids[a:b].tolist(), self.mask[a:b].tolist()


class SFTDataset(Dataset):
    """Conversations from a jsonl file, tokenized once at load time, as (x, y) with only assistant tokens
    as targets (every assistant turn's content plus its `</s>`).

    A conversation longer than seq_len + 1 tokens is cut after its last whole assistant answer that fits,
    so no example teaches an answer that runs on without `</s>`; one whose first answer does not fit is
    dropped and counted. Invalid lines are skipped and counted (strict=True stops).
    `SFTDataset.collate` pads a batch to its longest row (x with <unk>=0, y with -100).
    """

    def __init__(self, jsonl_path, tokenizer, seq_len: int = 512, strict: bool = False, verbose: bool = True,
                 show_skips: int = 3):
        self.seq_len = seq_len
        encoder = ChatEncoder(tokenizer)
        self.items = _PackedTokens()
        self.skips = Skips(strict, show_skips)  # show_skips: how many skips of each reason to print
        self.truncated = 0
        for number, row in read_jsonl(jsonl_path, self.skips):
            messages, reason, detail = conversation_of(row)
            if not reason and not any(m["role"] == "assistant" for m in messages):
                reason = "no assistant message"
            if not reason:
                ids, mask = encoder.encode(messages, lambda i, m: m["role"] == "assistant")
                if len(ids) > seq_len + 1:
                    # A target </s> closes an assistant answer (a typed "</s>" is text, never EOS_ID).
                    ends = [i + 1 for i in range(seq_len + 1) if mask[i] and ids[i] == EOS_ID]
                    if ends:
                        ids, mask = ids[: ends[-1]], mask[: ends[-1]]
                        self.truncated += 1
                    else:
                        reason = f"first assistant answer ends beyond seq_len={seq_len}"
            if reason:
                self.skips.add(f"{jsonl_path}:{number}", reason, detail)
                continue
            self.items.add(ids, mask)
        self.items.freeze()
        if verbose:
            report(jsonl_path, len(self.items), self.skips, self.truncated, seq_len, " after a whole answer")
        if len(self.items) == 0:
            raise MiniMindError(f"{jsonl_path}: no usable conversations")

    def __len__(self) -> int:
        return len(self.items)

    def lengths(self) -> np.ndarray:
        """Every example's token count as a training row (for --group_by_length)."""
        return np.minimum(np.diff(self.items.offsets), self.seq_len + 1) - 1

    def __getitem__(self, index: int):
        return shift_and_truncate(*self.items[index], self.seq_len)

    @staticmethod
    def collate(batch):
        """Right-pad to the longest row: padding sits after every real token, so causal attention
        never lets a real position see it, and its targets are -100."""
        length = max(len(x) for x, _ in batch)
        xs = torch.full((len(batch), length), PAD_ID, dtype=torch.long)
        ys = torch.full((len(batch), length), IGNORE, dtype=torch.long)
        for row, (x, y) in enumerate(batch):
            xs[row, : len(x)] = x
            ys[row, : len(y)] = y
        return xs, ys


def report(path, kept: int, skips: Skips, truncated: int, seq_len: int, cut_at: str = "") -> None:
    line = f"{path}: {kept} examples"
    if truncated:
        line += f", {truncated} cut{cut_at} at seq_len={seq_len}"
    if skips.total():
        line += f"; skipped {skips.total()}: {skips.summary()}"
    print(line)


def sft_loss(model, batch):
    """The SFT (and LoRA) training loss on a batch of SFTDataset.collate: cross-entropy on the assistant
    tokens only (y is -100 elsewhere), plus the MoE balance loss that the model's own loss includes.

    Logits are computed only where there is a target (loss_only). When every row begins with the same
    tokens and nothing there is learned (the tool conversations all open with the same system turn, half
    their tokens), that beginning runs once and the rows continue from its keys and values
    (model.SharedPrompts): the same loss and gradient for fewer tokens. Not under DDP, which expects one
    call of the model per backward, and not for MoE, whose balance loss counts every row's tokens. (With
    LoRA's dropout the shared start draws one dropout mask for all rows instead of one per row.)"""
    x, y = batch
    shared = shared_start(x, y)
    plain = isinstance(model, torch.nn.parallel.DistributedDataParallel) or model.config.use_moe
    if plain or not MIN_SHARED <= shared < x.shape[1] or x.shape[0] == 1:
        return model(input_ids=x, shift_labels=y, loss_only=True).loss, {}
    cache = SharedPrompts(group_size=x.shape[0])
    model(input_ids=x[:1, :shared], cache=cache, logits_to_keep=1)
    loss = model(input_ids=x[:, shared:], cache=cache, shift_labels=y[:, shared:], loss_only=True).loss
    return loss, {"computed": [(1, shared), (x.shape[0], x.shape[1] - shared)]}  # for the FLOPs (engine/runlog.py)


MIN_SHARED = 16  # tokens: below this, a second call of the model costs more than it saves


def shared_start(x: torch.Tensor, y: torch.Tensor) -> int:
    """How many leading positions every row of x has in common with no target among them."""
    differs = (x != x[:1]).any(dim=0) | (y != IGNORE).any(dim=0)
    return int(differs.nonzero()[0, 0]) if differs.any() else x.shape[1]


# ----------------------------------------------------------------------------- preference pairs

class DPODataset(Dataset):
    """Preference pairs {"prompt", "chosen", "rejected"} (each a list of messages) from a jsonl file.

    Each item is a dict of chosen_x, chosen_y, rejected_x, rejected_y: the prompt followed by one
    response, where y is -100 everywhere except on the response's assistant tokens (earlier assistant
    turns inside the prompt are context, not targets). `DPODataset.collate` pads chosen and rejected
    rows to one common length and adds float masks (y != -100), so the two can be concatenated into
    one forward pass.
    """

    def __init__(self, jsonl_path, tokenizer, seq_len: int = 512, strict: bool = False, verbose: bool = True,
                 show_skips: int = 3):
        self.seq_len = seq_len
        encoder = ChatEncoder(tokenizer)
        self.chosen, self.rejected = _PackedTokens(), _PackedTokens()
        self.skips = Skips(strict, show_skips)  # show_skips: how many skips of each reason to print
        self.truncated = 0
        for number, row in read_jsonl(jsonl_path, self.skips):
            reason, detail = ("line is not a JSON object", "") if not isinstance(row, dict) else ("", "")
            for key in ("prompt", "chosen", "rejected"):
                if not reason:
                    reason, detail = check_messages(row.get(key), key)
            pair = []
            if not reason:
                n_prompt = len(row["prompt"])
                for key in ("chosen", "rejected"):
                    ids, mask = encoder.encode(
                        row["prompt"] + row[key], lambda i, m: i >= n_prompt and m["role"] == "assistant"
                    )
                    if not any(mask[1 : seq_len + 1]):
                        reason = f"no {key} response token within seq_len={seq_len}"
                    pair.append((ids, mask))
            if reason:
                self.skips.add(f"{jsonl_path}:{number}", reason, detail)
                continue
            self.truncated += any(len(ids) > seq_len + 1 for ids, _ in pair)
            self.chosen.add(*pair[0])
            self.rejected.add(*pair[1])
        self.chosen.freeze()
        self.rejected.freeze()
        if verbose:
            report(jsonl_path, len(self.chosen), self.skips, self.truncated, seq_len)
        if len(self.chosen) == 0:
            raise MiniMindError(f"{jsonl_path}: no usable preference pairs")

    def __len__(self) -> int:
        return len(self.chosen)

    def __getitem__(self, index: int) -> dict:
        chosen_x, chosen_y = shift_and_truncate(*self.chosen[index], self.seq_len)
        rejected_x, rejected_y = shift_and_truncate(*self.rejected[index], self.seq_len)
        return dict(chosen_x=chosen_x, chosen_y=chosen_y, rejected_x=rejected_x, rejected_y=rejected_y)

    @staticmethod
    def collate(batch) -> dict:
        length = max(max(len(item["chosen_x"]), len(item["rejected_x"])) for item in batch)
        out = {}
        for side in ("chosen", "rejected"):
            xs = torch.full((len(batch), length), PAD_ID, dtype=torch.long)
            ys = torch.full((len(batch), length), IGNORE, dtype=torch.long)
            for row, item in enumerate(batch):
                x, y = item[f"{side}_x"], item[f"{side}_y"]
                xs[row, : len(x)] = x
                ys[row, : len(y)] = y
            out[f"{side}_x"], out[f"{side}_y"], out[f"{side}_mask"] = xs, ys, (ys != IGNORE).float()
        return out


class PackedChatDataset(Dataset):
    """Whole conversations packed into rows of up to seq_len + 1 tokens, so a batch spends its
    compute on text instead of padding (the median training conversation is a third of a 256 window).

    Conversations are taken in order and a row is closed when the next one does not fit; none is cut
    (SFTDataset has already cut or dropped the ones longer than a row). Within a row a conversation
    can attend to the ones before it: each starts with its own `<s>user` header, as a fresh chat does.
    targets="assistant" learns the replies only, as SFT does; targets="all" learns every token,
    template included: pretraining on the conversations in the very format the chat uses.
    """

    def __init__(self, conversations: list, seq_len: int, targets: str = "assistant"):
        if targets not in ("assistant", "all"):
            raise ValueError(f"targets must be 'assistant' or 'all', got {targets!r}")
        self.seq_len = seq_len
        self.rows = _PackedTokens()
        row_ids, row_mask = [], []
        count = 0
        for dataset in conversations:
            for i in range(len(dataset.items)):
                ids, mask = dataset.items[i]
                if targets == "all":
                    mask = [True] * len(ids)
                if row_ids and len(row_ids) + len(ids) > seq_len + 1:
                    self.rows.add(row_ids, row_mask)
                    row_ids, row_mask = [], []
                row_ids += ids
                row_mask += mask
                count += 1
        if row_ids:
            self.rows.add(row_ids, row_mask)
        self.rows.freeze()
        self.conversations = count
        self.tokens = int(self.rows.offsets[-1])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        return shift_and_truncate(*self.rows[index], self.seq_len)

    collate = staticmethod(SFTDataset.collate)
