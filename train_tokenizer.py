"""Train the MiniMind tokenizer on the pretraining text: byte-level BPE (default) or SentencePiece.

    python train_tokenizer.py                        # BPE, vocab 6400, into model/minimind_tokenizer/
    python train_tokenizer.py --eval                 # then: round trip, chars/token, a rendered chat
    python train_tokenizer.py --eval_only            # only evaluate the tokenizer already in --out
    python train_tokenizer.py --kind sentencepiece --vocab_size 32000 --out model/minimind_tokenizer_32k
    python train_tokenizer.py --jsonl pretrain_hq.jsonl --sources   # upstream {"text"} files only

The text comes from data/pretrain.py's converters over dataset/raw (run `data_process.py fetch`
first), cleaned and deduplicated exactly as the corpus will be. Training uses a bounded,
deterministic sample (--sample_mb) of the training split only; the held-out split (the same documents
that go into val_*.bin) is what --eval measures. Same input, same tokenizer.

Both kinds save a folder that `AutoTokenizer.from_pretrained` loads, with <unk>=0 <s>=1 </s>=2 and the
chat template from model/tokenizer.py.
"""

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from data import DATASET
from data.clean import content_hash, is_val
from data.pretrain import PRETRAIN_SOURCES, pretrain_documents
from model.errors import run_main
from model.tokenizer import (
    BOS_ID,
    DEFAULT_TOKENIZER_DIR,
    EOS_ID,
    SPECIAL_TOKENS,
    TOOL_TOKENS,
    UNK_ID,
    load_tokenizer,
    save_tokenizer,
    train_bpe,
)


def split_texts(args):
    """(training sample, held-out texts). The sample keeps each training document with a fixed
    hash-based probability sized so the sample is about --sample_mb, and stops at that size."""
    raw_bytes = sum(
        p.stat().st_size
        for name, (pattern, _) in PRETRAIN_SOURCES.items()
        if args.sources is None or name in args.sources
        for p in Path(args.raw).glob(pattern)
    )
    raw_bytes += sum(Path(p).stat().st_size for p in args.jsonl + args.chat_jsonl)
    if raw_bytes == 0:
        raise SystemExit(
            f"no pretraining text under {args.raw}: run `python data_process.py fetch` first (or pass --jsonl)"
        )
    budget = int(args.sample_mb * 1e6)
    keep = min(1.0, budget / raw_bytes)
    sample, held_out, size = [], [], 0
    for _, whole, piece in pretrain_documents(args.raw, args.jsonl, args.sources, min_chars=1,
                                              chat_files=args.chat_jsonl):
        if is_val(whole, args.val_fraction):
            held_out.append(piece)
        elif size < budget and content_hash("sample:" + whole) % 10_000 < keep * 10_000:
            sample.append(piece)
            size += len(piece.encode("utf-8"))
    return sample, held_out


def train_sentencepiece(texts, vocab_size: int, out_dir: Path) -> None:
    """A SentencePiece BPE with byte fallback and no normalisation (so text round-trips), rebuilt as a
    `tokenizers` BPE (same pieces, merges ranked by the merged piece's id, spaces as ▁) so that it loads
    with AutoTokenizer, with the same special ids and chat template as the byte-level one."""
    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, models, normalizers

    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / "sentencepiece"
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_prefix=str(prefix),
            vocab_size=vocab_size - len(TOOL_TOKENS),  # save_tokenizer adds the tool tokens at the end
            model_type="bpe",
            character_coverage=0.9995,
            byte_fallback=True,
            split_digits=True,
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            pad_id=-1,
            max_sentence_length=1 << 16,
            num_threads=2,
            minloglevel=2,
        )
    except RuntimeError as error:  # e.g. a vocabulary smaller than the characters it must cover
        raise SystemExit(f"SentencePiece training failed: {str(error).split(']')[-1].strip()}")
    processor = spm.SentencePieceProcessor(model_file=str(prefix) + ".model")
    vocab = {processor.id_to_piece(i): i for i in range(processor.get_piece_size())}
    merges = sorted(
        (
            (piece[:k], piece[k:])
            for piece in vocab
            for k in range(1, len(piece))
            if piece[:k] in vocab and piece[k:] in vocab
        ),
        key=lambda pair: (vocab[pair[0] + pair[1]], vocab[pair[0]], vocab[pair[1]]),
    )
    tokenizer = Tokenizer(
        models.BPE(vocab, merges, unk_token=SPECIAL_TOKENS[UNK_ID], byte_fallback=True, fuse_unk=True)
    )
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    for i, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == i, f"special token {token} must have id {i}"
    save_tokenizer(tokenizer, out_dir)


@dataclass
class Evaluation:
    """What `evaluate` measured on the held-out documents."""

    vocab_size: int
    special_ids: dict[str, int]  # {"<unk>": 0, "<s>": 1, "</s>": 2} when the tokenizer is right
    documents: int
    characters: int  # Python characters (code points), not bytes
    tokens: int  # without special tokens
    round_trip_failures: list[str]  # documents where decode(encode(text)) != text
    seconds: float

    @property
    def chars_per_token(self) -> float:
        """How much text one token carries: higher means shorter sequences for the same text, so more text
        in the model's context and fewer steps per epoch. A bare byte-level tokenizer gets 1/3 on Chinese
        (three UTF-8 bytes per character); a useful one gets well above 1."""
        return self.characters / max(1, self.tokens)

    @property
    def round_trips(self) -> int:
        return self.documents - len(self.round_trip_failures)


def measure(tokenizer, held_out: list[str], batch: int = 1000) -> Evaluation:
    """Encode every held-out document (in batches: the fast tokenizer encodes a batch in parallel), count
    characters and tokens, and check that decoding gives back the exact text."""
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    start, chars, tokens, failures = time.time(), 0, 0, []
    for i in range(0, len(held_out), batch):
        texts = held_out[i : i + batch]
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
        for text, row in zip(texts, encoded):
            chars += len(text)
            tokens += len(row)
            if tokenizer.decode(row) != text:
                failures.append(text)
    return Evaluation(len(tokenizer), ids, len(held_out), chars, tokens, failures, time.time() - start)


def evaluate(out_dir: Path, held_out: list[str]) -> Evaluation:
    """Measure the tokenizer in out_dir on the held-out documents, print a report, and return the numbers.
    Exits (after the report) when the special tokens are not at their fixed ids or the round trip fails."""
    tokenizer = load_tokenizer(out_dir)
    result = measure(tokenizer, held_out)
    print(f"vocab {result.vocab_size}; special ids {result.special_ids}")
    print(
        f"held-out text: {result.documents} documents, {result.characters:,} characters, {result.tokens:,} tokens, "
        f"{result.chars_per_token:.2f} chars/token ({result.seconds:.1f}s)"
    )
    print(f"round trip decode(encode(text)) == text: {result.round_trips}/{result.documents} documents")
    for text in result.round_trip_failures[:3]:
        print(f"  differs: {text[:80]!r}")
    example = "人工智能是计算机科学的一个分支。The model has 26M parameters."
    pieces = tokenizer.convert_ids_to_tokens(tokenizer.encode(example, add_special_tokens=False))
    print(f"example: {example}\n  {len(pieces)} tokens: {[tokenizer.convert_tokens_to_string([p]) for p in pieces]}")
    chat = [
        {"role": "system", "content": "你是一个乐于助人的助手。"},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！有什么可以帮你？"},
        {"role": "user", "content": "介绍一下长江。"},
    ]
    print(
        "rendered chat (add_generation_prompt=True):\n"
        + tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    )
    if list(result.special_ids.values()) != [UNK_ID, BOS_ID, EOS_ID]:
        raise SystemExit(f"special tokens are not at their fixed ids: {result.special_ids}")
    if result.round_trip_failures:
        raise SystemExit(f"round trip failed on {len(result.round_trip_failures)} held-out documents")
    return result


def main(argv=None) -> Evaluation | None:
    """Train (unless --eval_only), then with --eval / --eval_only evaluate; returns the evaluation, if any."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=["bpe", "sentencepiece"], default="bpe")
    parser.add_argument("--vocab_size", type=int, default=6400)
    parser.add_argument("--out", default=str(DEFAULT_TOKENIZER_DIR))
    parser.add_argument("--raw", default=str(DATASET / "raw"), help="fetched source files (data_process.py fetch)")
    parser.add_argument("--jsonl", nargs="*", default=[], help='extra {"text"} jsonl files')
    parser.add_argument("--chat_jsonl", nargs="*", default=[],
                        help="chat jsonl files (sft_single.jsonl, dpo.jsonl, ...) whose messages are training text: "
                             "a tokenizer for the text the chat model will read and write")
    parser.add_argument(
        "--sources",
        nargs="*",
        default=None,
        choices=list(PRETRAIN_SOURCES),
        help="only these built-in sources (give none to use only --jsonl)",
    )
    parser.add_argument("--sample_mb", type=float, default=8.0, help="train on about this much text")
    parser.add_argument("--val_fraction", type=float, default=0.01, help="must match `data_process.py pretrain`")
    parser.add_argument("--eval", action="store_true", help="evaluate after training")
    parser.add_argument("--eval_only", action="store_true", help="evaluate the tokenizer in --out, do not train")
    args = parser.parse_args(argv)
    out = Path(args.out)
    for path in args.jsonl + args.chat_jsonl:
        if not Path(path).is_file():
            raise SystemExit(f"{path}: no such file (--jsonl / --chat_jsonl)")
    if not args.eval_only and args.vocab_size < 256 + len(SPECIAL_TOKENS):
        raise SystemExit(f"--vocab_size {args.vocab_size}: needs at least {256 + len(SPECIAL_TOKENS)} "
                         f"(every byte plus the special tokens)")
    if args.eval_only and not (out / "tokenizer.json").is_file():
        raise SystemExit(f"--eval_only: no tokenizer at {out} (train one first, or pass --out)")

    start = time.time()
    sample, held_out = split_texts(args)
    size = sum(len(t.encode("utf-8")) for t in sample)
    print(
        f"text: {len(sample)} training documents ({size / 1e6:.1f} MB sample), {len(held_out)} held out "
        f"({time.time() - start:.1f}s to read)"
    )
    if not args.eval_only:
        if not sample:
            raise SystemExit("no training text: fetch data first, or pass --jsonl")
        start = time.time()
        if args.kind == "bpe":
            train_bpe(sample, args.vocab_size, out)
        else:
            train_sentencepiece(sample, args.vocab_size, out)
        (out / "training.json").write_text(
            json.dumps(
                {"kind": args.kind, "vocab_size": args.vocab_size, "documents": len(sample), "bytes": size}, indent=2
            ),
            encoding="utf-8",
        )
        print(f"trained a {args.kind} tokenizer, vocab {args.vocab_size}, in {time.time() - start:.1f}s -> {out}")
    if args.eval or args.eval_only:
        return evaluate(out, held_out)
    return None


if __name__ == "__main__":
    run_main(main)
