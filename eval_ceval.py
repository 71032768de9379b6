"""Score a MiniMind on C-Eval's validation split (52 subjects, 1346 questions), or any CSV set of that layout.

    python eval_ceval.py                                  # out/full_sft_512x8.pth, zero-shot
    python eval_ceval.py --weight dpo --shots 5           # 5 solved dev questions before each one
    python eval_ceval.py --data_dir ../shared/data/ceval  # a C-Eval copy somewhere else
    python eval_ceval.py --data_dir data/cmmlu --split test --dev_split dev   # CMMLU's layout
    python eval_ceval.py --limit 2                        # 2 questions per subject: a quick smoke run

Protocol. A system message states the task (`以下是中国关于{科目}考试的单项选择题，请选出其中的正确答案。`);
each question and its four options become one user turn (the question, `A. ...` to `D. ...` and
`答案：`); with --shots k, the first k dev questions of the subject come first as earlier
user/assistant turns whose answer is the bare letter. After the assistant header the model's
next-token distribution decides: the option whose letter has the highest probability is the
model's answer. No text is generated, so the score does not depend on sampling.

The probability of a letter is the total over the tokens that spell that letter as a whole first word
("A", " A", "A.", "A、", ... but not "AB" or "A股"), so a tokenizer that merged the letter with
punctuation is still read correctly; with our byte-level tokenizer the bare letter is always a token
of its own. Prompts longer than the model's context lose shots first, then the beginning of the
question (the options and the answer cue at the end are kept): model/chat.py's policy, the chat's and
the server's. Their number is reported.

Data: `{data_dir}/{split}/{subject}_{split}.csv` (or `{subject}.csv`) with columns id, question, A, B, C, D,
answer (any letter case); an optional `{data_dir}/subject_mapping.json` maps a subject to
[English name, Chinese name, category]. By default data_dir is dataset/raw/ceval (where
`python data_process.py fetch` puts it), else ../shared/data/ceval.

Writes, under --out (default out/ceval/{weight}_{tag}/):
    {subject}.csv    id, question, answer, model_answer, correct, p_A..p_D (one row per question)
    summary.csv      per subject: name, category, questions, correct, accuracy
    summary.json     everything above plus per-category, micro (all questions) and macro (mean of
                     subjects) accuracy, the 25% chance line, and the counts of skipped rows
    summary.txt      the printed report
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep, not spin: set before torch loads
import argparse
import json
import reprlib
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from model.chat import ContextTooLong, build_prompt
from model.checkpoint import atomic_write
from model.cli import ROOT, add_model_args, load_from_args
from model.errors import MiniMindError, run_main
from model.generate import context_length, left_pad
from model.jsonfile import read_json_object
from model.tokenizer import PAD_ID

LETTERS = "ABCD"
CHANCE = 0.25
DEFAULT_DATA_DIRS = (ROOT / "dataset" / "raw" / "ceval", ROOT.parent / "shared" / "data" / "ceval")
HEADER = "以下是中国关于{}考试的单项选择题，请选出其中的正确答案。"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    add_model_args(parser, default_weight="full_sft")
    parser.add_argument("--data_dir", default=None, help="folder holding {split}/ CSVs (default: see above)")
    parser.add_argument("--split", default="val", help="folder of the scored questions (val has answers; test does not)")
    parser.add_argument("--dev_split", default="dev", help="folder the --shots exemplars come from")
    parser.add_argument("--shots", type=int, default=0, help="solved dev questions shown before each question")
    parser.add_argument("--subjects", default=None, help="comma-separated subset of subjects (default: all)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--limit", type=int, default=0, help="score only the first N questions of each subject (0 = all)")
    parser.add_argument("--out", default=None, help="output folder (default out/ceval/{weight}_{tag})")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.shots < 0 or args.batch_size < 1 or args.limit < 0:
        parser.error("--shots and --limit must be >= 0, --batch_size >= 1")
    return args


# ----------------------------------------------------------------------------- data

@dataclass
class Question:
    subject: str
    id: str
    question: str
    options: list[str]
    answer: str


@dataclass
class Subject:
    name: str
    title: str  # the Chinese name used in the prompt
    category: str
    questions: list[Question]
    shots: list[Question] = field(default_factory=list)
    skipped: int = 0


def find_data_dir(arg) -> Path:
    if arg:
        path = Path(arg)
        if not path.is_dir():
            raise MiniMindError(f"--data_dir {path} is not a folder")
        return path
    for path in DEFAULT_DATA_DIRS:
        if path.is_dir():
            return path
    tried = " or ".join(str(p) for p in DEFAULT_DATA_DIRS)
    raise MiniMindError(f"no C-Eval data at {tried}: run `python data_process.py fetch`, or pass --data_dir")


def subject_files(data_dir: Path, split: str) -> dict[str, Path]:
    folder = data_dir / split
    files = sorted(folder.glob("*.csv"))
    if not files:
        raise MiniMindError(f"{folder}: no CSV files (expected {split}/{{subject}}_{split}.csv)")
    return {f.stem.removesuffix(f"_{split}"): f for f in files}


def read_questions(path: Path, subject: str) -> tuple[list[Question], int]:
    """The well-formed questions of one CSV, and how many rows were skipped (each one reported)."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OSError) as error:
        detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise MiniMindError(f"{path}: not a readable UTF-8 CSV ({detail})")
    columns = {str(c).strip().lower(): c for c in frame.columns}
    missing = [c for c in ("question", "a", "b", "c", "d", "answer") if c not in columns]
    if missing:
        raise MiniMindError(f"{path}: missing column(s) {', '.join(missing)} "
                            f"(found {', '.join(map(str, frame.columns))})")
    records = frame.rename(columns={original: name for name, original in columns.items()}).to_dict("records")
    questions, skipped = [], 0
    for number, row in enumerate(records, start=1):
        get = lambda name: str(row.get(name, "")).strip()
        answer, text = get("answer").upper(), get("question")
        if answer not in LETTERS or not text:
            problem = f"answer {answer!r} is not one of A/B/C/D" if answer not in LETTERS else "empty question"
            if skipped < 5:
                print(f"{path}: record {number} skipped: {problem}", file=sys.stderr)
            skipped += 1
            continue
        qid = get("id") if "id" in columns else str(number - 1)
        questions.append(Question(subject, qid, text, [get(letter.lower()) for letter in LETTERS], answer))
    if skipped > 5:
        print(f"{path}: {skipped} records skipped in all", file=sys.stderr)
    return questions, skipped


def load_subjects(data_dir: Path, split: str, dev_split: str, shots: int, only=None) -> list[Subject]:
    mapping_file = data_dir / "subject_mapping.json"
    # read_json_object names the file for anything unusable: not UTF-8, not JSON, too deep, not an object
    mapping = read_json_object(mapping_file) if mapping_file.exists() else {}
    files = subject_files(data_dir, split)
    if only:
        unknown = sorted(set(only) - set(files))
        if unknown:
            raise MiniMindError(f"--subjects: {', '.join(unknown)} not in {data_dir / split}")
        files = {name: files[name] for name in only}
    dev_files = subject_files(data_dir, dev_split) if shots else {}
    subjects = []
    for name, path in files.items():
        questions, skipped = read_questions(path, name)
        entry = mapping.get(name, [name, name.replace("_", " "), "Other"])
        if not (isinstance(entry, list) and len(entry) == 3 and all(isinstance(x, str) for x in entry)):
            raise MiniMindError(f"{mapping_file}: {name!r} must map to [English name, Chinese name, category], "
                                f"got {reprlib.repr(entry)}")
        _, title, category = entry
        subject = Subject(name, title, category, questions, skipped=skipped)
        if shots:
            if name not in dev_files:
                raise MiniMindError(f"--shots {shots}: no {dev_split} file for subject {name} "
                                    f"in {data_dir / dev_split}")
            subject.shots = read_questions(dev_files[name], name)[0][:shots]
        subjects.append(subject)
    return subjects


# ----------------------------------------------------------------------------- prompts and scoring

def question_text(q: Question) -> str:
    options = "".join(f"\n{letter}. {option}" for letter, option in zip(LETTERS, q.options))
    return f"{q.question}{options}\n答案："


def prompt_ids(tokenizer, subject: Subject, q: Question, max_tokens: int) -> tuple[list[int], bool]:
    """Chat-rendered prompt ids ending with the assistant header, and whether it had to be cut. The
    header is a system message and each shot a turn, so model/chat.py's policy (the chat's and the
    server's) drops the oldest shots first, then cuts the start of the question."""
    messages = [{"role": "system", "content": HEADER.format(subject.title)}]
    for shot in subject.shots:
        messages += [{"role": "user", "content": question_text(shot)}, {"role": "assistant", "content": shot.answer}]
    messages.append({"role": "user", "content": question_text(q)})
    try:
        return build_prompt(tokenizer, messages, max_tokens)[0], False
    except ContextTooLong:
        return build_prompt(tokenizer, messages, max_tokens, cut=True)[0], True


def letter_token_ids(tokenizer) -> dict[str, list[int]]:
    """For each letter, the vocabulary tokens that read as that letter on its own: the letter, maybe
    after spaces, followed by nothing or by punctuation/space ("A", " A", "A.", "A、" but not "AB", "A股")."""
    groups = {letter: [] for letter in LETTERS}
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    for token_id, text in enumerate(texts):
        text = text.lstrip()
        if text[:1] in groups and (len(text) == 1 or unicodedata.category(text[1])[0] in "PZC"):
            groups[text[0]].append(token_id)
    empty = [letter for letter in LETTERS if not groups[letter]]
    if empty:
        raise MiniMindError(f"the tokenizer has no token that reads as the answer letter(s) {', '.join(empty)}")
    return groups


@torch.no_grad()
def letter_probabilities(model, batch: list[list[int]], groups: dict[str, list[int]]) -> torch.Tensor:
    """(len(batch), 4) probabilities of A/B/C/D as the next token after each prompt.
    Prompts are left-padded and masked, so the last position is the next-token position of every row."""
    tokens, mask = left_pad(batch, PAD_ID, model.device)
    logits = model(tokens, attention_mask=mask, logits_to_keep=1).logits[:, -1]
    probs = logits.float().softmax(dim=-1).cpu()
    return torch.stack([probs[:, groups[letter]].sum(dim=-1) for letter in LETTERS], dim=-1)


def evaluate(model, tokenizer, subjects: list[Subject], batch_size: int) -> tuple[dict[str, pd.DataFrame], int]:
    """Per-subject result tables, and how many prompts were cut to fit the context."""
    groups = letter_token_ids(tokenizer)
    items, cut = [], 0  # (subject name, position in the subject, question, prompt ids)
    for subject in subjects:
        for position, q in enumerate(subject.questions):
            ids, was_cut = prompt_ids(tokenizer, subject, q, context_length(model.config))
            items.append((subject.name, position, q, ids))
            cut += was_cut
    # Similar lengths share a batch, so little compute goes to padding.
    items.sort(key=lambda item: len(item[3]))
    rows = {subject.name: [None] * len(subject.questions) for subject in subjects}
    with tqdm(total=len(items), desc="C-Eval", unit="q", file=sys.stderr) as bar:
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            probs = letter_probabilities(model, [ids for *_, ids in chunk], groups)
            for (name, position, q, _), p in zip(chunk, probs.tolist()):
                choice = LETTERS[max(range(len(LETTERS)), key=lambda i: p[i])]
                letter_probs = {f"p_{letter}": round(value, 6) for letter, value in zip(LETTERS, p)}
                rows[name][position] = dict(id=q.id, question=q.question, answer=q.answer, model_answer=choice,
                                            correct=choice == q.answer, **letter_probs)
            bar.update(len(chunk))
    columns = ["id", "question", "answer", "model_answer", "correct"] + [f"p_{letter}" for letter in LETTERS]
    tables = {name: pd.DataFrame(r, columns=columns) for name, r in rows.items()}
    return tables, cut


# ----------------------------------------------------------------------------- report

def summarize(subjects: list[Subject], tables: dict[str, pd.DataFrame], cut: int, **settings) -> dict:
    per_subject = {}
    for s in subjects:
        n, correct = len(tables[s.name]), int(tables[s.name]["correct"].sum())
        per_subject[s.name] = dict(name=s.title, category=s.category, questions=n, correct=correct,
                                   accuracy=correct / n if n else None, skipped=s.skipped)
    scored = {k: v for k, v in per_subject.items() if v["questions"]}
    categories = {}
    for category in sorted({v["category"] for v in scored.values()}):
        members = [v for v in scored.values() if v["category"] == category]
        n, correct = sum(v["questions"] for v in members), sum(v["correct"] for v in members)
        categories[category] = dict(subjects=len(members), questions=n, correct=correct, micro=correct / n,
                                    macro=sum(v["accuracy"] for v in members) / len(members))
    n, correct = sum(v["questions"] for v in scored.values()), sum(v["correct"] for v in scored.values())
    return dict(**settings, subjects=len(per_subject), questions=n, correct=correct,
                micro=correct / n if n else None,
                macro=sum(v["accuracy"] for v in scored.values()) / len(scored) if scored else None,
                chance=CHANCE, skipped_rows=sum(s.skipped for s in subjects), prompts_cut=cut,
                categories=categories, per_subject=per_subject)


def report_text(summary: dict) -> str:
    percent = lambda x: "-" if x is None else f"{100 * x:.2f}%"
    lines = [f"{'subject':<42} {'category':<15} {'n':>4} {'acc':>7}"]
    for name, v in summary["per_subject"].items():
        lines.append(f"{name:<42} {v['category']:<15} {v['questions']:>4} {percent(v['accuracy']):>7}")
    lines.append("")
    lines.append(f"{'category':<20} {'subjects':>8} {'n':>5} {'micro':>8} {'macro':>8}")
    for name, v in summary["categories"].items():
        lines.append(f"{name:<20} {v['subjects']:>8} {v['questions']:>5} {percent(v['micro']):>8} {percent(v['macro']):>8}")
    lines.append("")
    lines.append(f"{summary['questions']} questions in {summary['subjects']} subjects ({summary['shots']}-shot): "
                 f"micro {percent(summary['micro'])}, macro {percent(summary['macro'])} "
                 f"(random guessing scores {100 * summary['chance']:.0f}%)")
    if summary["skipped_rows"]:
        lines.append(f"{summary['skipped_rows']} malformed rows skipped (listed above)")
    if summary["prompts_cut"]:
        lines.append(f"{summary['prompts_cut']} prompts were longer than the context and were cut")
    return "\n".join(lines)


def write_results(results: Path, tables: dict[str, pd.DataFrame], summary: dict, text: str) -> None:
    for name, table in tables.items():
        atomic_write(results / f"{name}.csv", lambda tmp, t=table: t.to_csv(tmp, index=False, encoding="utf-8"))
    per_subject = pd.DataFrame([dict(subject=k, **v) for k, v in summary["per_subject"].items()])
    atomic_write(results / "summary.csv", lambda tmp: per_subject.to_csv(tmp, index=False, encoding="utf-8"))
    as_json = json.dumps(summary, indent=2, ensure_ascii=False, default=str)
    atomic_write(results / "summary.json", lambda tmp: Path(tmp).write_text(as_json, encoding="utf-8"))
    atomic_write(results / "summary.txt", lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))


def main(argv=None) -> dict:
    args = parse_args(argv)
    data_dir = find_data_dir(args.data_dir)
    only = [s.strip() for s in args.subjects.split(",") if s.strip()] if args.subjects else None
    subjects = load_subjects(data_dir, args.split, args.dev_split, args.shots, only)
    if args.limit:
        for subject in subjects:
            subject.questions = subject.questions[:args.limit]
    model, tokenizer = load_from_args(args)
    name = Path(args.ckpt).stem if args.ckpt else f"{args.weight}_{model.config.tag()}"
    results = Path(args.out) if args.out else Path(args.out_dir) / "ceval" / name
    tables, cut = evaluate(model, tokenizer, subjects, args.batch_size)
    summary = summarize(subjects, tables, cut, model=name, data_dir=str(data_dir), split=args.split, shots=args.shots)
    text = report_text(summary)
    write_results(results, tables, summary, text)
    print(text)
    print(f"results in {results}/")
    return summary


if __name__ == "__main__":
    run_main(main)
