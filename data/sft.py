"""Conversations for supervised fine-tuning: converters from Alpaca, ShareGPT, KdConv, the medical
dialogue CSV, exam sets and chat jsonl to messages, cleaned and cut to whole exchanges, written as the
single-turn, multi-turn, held-out and LoRA jsonl files (`build_sft`)."""

import time
from pathlib import Path

from tqdm import tqdm

from data.clean import VENDOR_CLAIM, SeenBefore, ceval_guard, has_lone_surrogate, is_val, message, normalize
from data.datasets import Skips, check_messages
from data.read import Report, csv_rows, read_json_file, read_jsonl_file, read_text_file, records, write_jsonl
from evaluation.identity import HELD_OUT_QUESTIONS as IDENTITY_HELD_OUT
from evaluation.identity import question_key
from model.errors import MiniMindError


def history_messages(history) -> list[dict] | None:
    """Earlier exchanges given as [[question, answer], ...] (absent or empty: none) -> user/assistant
    messages; None when `history` is not such a list."""
    history = history or []
    if not isinstance(history, list) or not all(
        isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) for t in turn) for turn in history
    ):
        return None
    return [message(role, text) for turn in history for role, text in zip(("user", "assistant"), turn)]


def alpaca_items(path: Path, report: Report, fill=None):
    """{instruction, input, output[, history]} (Alpaca, Chinese Alpaca, LLaMA-Factory identity)."""
    data = read_json_file(path, report)
    if data is None:
        return
    for where, item in records(data, path, report):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("instruction"), str)
            or not isinstance(item.get("output"), str)
        ):
            report.skips.add(where, "missing 'instruction' or 'output' string")
            continue
        prompt = item["instruction"] + (
            "\n" + item["input"] if isinstance(item.get("input"), str) and item["input"].strip() else ""
        )
        messages = history_messages(item.get("history"))
        if messages is None:
            report.skips.add(where, "'history' is not a list of [question, answer] strings")
            continue
        messages += [message("user", prompt), message("assistant", item["output"])]
        if fill:
            for m in messages:
                for key, value in fill.items():
                    m["content"] = m["content"].replace("{{" + key + "}}", value)
        yield where, messages


def identity_items(path: Path, report: Report, name="MiniMind", author="MiniMind"):
    """LLaMA-Factory's identity set, then identity_paraphrases: 91 conversations alone were too few for an
    adapter to learn the name (a tiny model still answered "你是谁？" with a film title after LoRA)."""
    yield from alpaca_items(path, report, fill={"name": name, "author": author})
    for i, messages in enumerate(identity_paraphrases(name, author)):
        yield f"identity_paraphrases:{i}", messages


# Ways to ask who the model is, each with the kind of reply it takes: "who" (I am NAME), "other" (asks
# about another model: no, I am NAME) and "yes" (are you an AI: yes, I am NAME). None of them, with or
# without a greeting in front, is a question of evaluation/identity.py's held-out set (build_sft drops
# any that would be, and tests/test_identity.py checks the built file).
IDENTITY_QUESTIONS_ZH = {
    "who": ["你是什么人", "请问你是谁", "您是谁", "你是哪位", "请问您是哪位", "你叫什么", "你的名字是什么",
            "怎么称呼你", "我应该怎么称呼你", "能告诉我你的名字吗", "你叫什么名儿", "您叫什么名字", "您贵姓",
            "你的全名是什么", "你的英文名是什么", "大家都叫你什么", "你的昵称是什么", "报一下你的名字",
            "简单介绍一下你自己", "请你介绍一下自己", "说说你自己", "讲讲你是谁", "你能介绍下自己吗",
            "给我介绍一下你吧", "先介绍一下你自己", "你是干什么的", "你是做什么的", "你的身份是什么",
            "告诉我你的身份", "你是什么模型", "你是哪个公司的模型", "你属于哪个大模型", "你用的是什么模型",
            "你是什么类型的AI", "你是哪种AI助手", "你是谁家的AI", "你是什么东西", "你是什么软件",
            "现在和我对话的是谁", "屏幕那头是谁", "你是谁开发的", "你是谁做的", "谁创造了你，你叫什么",
            "你的开发者给你起了什么名字", "你是一个什么样的助手"],
    "other": ["你是ChatGPT吗", "你是GPT-4吗", "你是文心一言吗", "你是通义千问吗", "你是Claude吗",
              "你是Siri吗", "你是小爱同学吗", "你是OpenAI的模型吗", "你是不是文心一言"],
    "yes": ["你是机器人吗", "你是AI吗", "你是一个程序吗", "你是大语言模型吗", "你是人工智能助手吗",
            "你是不是机器人", "你是语言模型吗"],
}
IDENTITY_QUESTIONS_EN = {
    "who": ["Who are you", "What is your name", "What are you", "Tell me your name", "May I know your name",
            "Can you introduce yourself", "What do people call you", "What kind of model are you",
            "Who made you", "Tell me about yourself", "What is this assistant called"],
    "other": ["Are you ChatGPT", "Are you GPT-4", "Are you Claude", "Are you made by OpenAI"],
    "yes": ["Are you a robot", "Are you a language model", "Are you an AI"],
}
IDENTITY_PREFIXES_ZH = ["", "你好，", "您好，", "嗨，", "对了，", "我想知道", "冒昧问一下，", "打扰一下，"]
IDENTITY_PREFIXES_EN = ["", "Hi, ", "Hello! ", "Hey, "]
IDENTITY_ENDINGS_ZH = ["？", "？", "?", ""]
IDENTITY_ENDINGS_EN = ["?", "?", ""]
# Every reply states the name in its first words, so the adapter learns one thing: who is speaking.
IDENTITY_REPLIES = {
    "zh": {
        "who": ["我是{name}，一个由{author}开发的人工智能助手。",
                "我是{name}，一个小型中文语言模型，很高兴为您服务。",
                "我叫{name}，是{author}训练的AI助手，有什么可以帮您？",
                "我是{name}。我是一个人工智能助手，可以回答问题、聊天和写作。",
                "您好，我是{name}，由{author}开发的AI助手。",
                "我的名字是{name}，一个由{author}打造的语言模型。"],
        "other": ["不是，我是{name}，一个由{author}开发的人工智能助手。",
                  "不是的，我是{name}，由{author}训练的语言模型。"],
        "yes": ["是的，我是{name}，一个由{author}开发的人工智能助手。",
                "是的，我叫{name}，是{author}训练的语言模型。"],
    },
    "en": {
        "who": ["I am {name}, an AI assistant developed by {author}.",
                "I'm {name}, a small language model trained by {author}. How can I help?",
                "My name is {name}, an AI assistant built by {author}."],
        "other": ["No, I am {name}, an AI assistant developed by {author}."],
        "yes": ["Yes, I am {name}, an AI assistant developed by {author}."],
    },
}


def identity_paraphrases(name="MiniMind", author="MiniMind") -> list[list[dict]]:
    """Every identity question with every greeting prefix, each answered with a reply that starts by
    stating `name`; the ending and the reply rotate, so the set is the same on every build."""
    conversations, turn = [], 0
    languages = (("zh", IDENTITY_QUESTIONS_ZH, IDENTITY_PREFIXES_ZH, IDENTITY_ENDINGS_ZH),
                 ("en", IDENTITY_QUESTIONS_EN, IDENTITY_PREFIXES_EN, IDENTITY_ENDINGS_EN))
    for lang, questions, prefixes, endings in languages:
        for kind, cores in questions.items():
            replies = IDENTITY_REPLIES[lang][kind]
            for core in cores:
                for prefix in prefixes:
                    question = prefix + (core[0].lower() + core[1:] if prefix and lang == "en" else core)
                    question += endings[turn // len(replies) % len(endings)]
                    reply = replies[turn % len(replies)].format(name=name, author=author)
                    conversations.append([message("user", question), message("assistant", reply)])
                    turn += 1
    return conversations


def sharegpt_conversations(turns) -> tuple[list[dict] | None, str, str]:
    """ShareGPT turns [{"from", "value"}] (or {"role", "content"}) -> (messages, '', '') or (None, reason, detail)."""
    roles = {
        "human": "user",
        "user": "user",
        "gpt": "assistant",
        "assistant": "assistant",
        "chatgpt": "assistant",
        "bard": "assistant",
        "system": "system",
    }
    if not isinstance(turns, list):
        return None, "'conversations' is not a list", ""
    if not turns:
        return None, "'conversations' is empty", ""
    messages = []
    for i, turn in enumerate(turns):
        speaker = turn.get("from", turn.get("role", "")) if isinstance(turn, dict) else None
        role = roles.get(speaker.lower()) if isinstance(speaker, str) else None
        content = turn.get("value", turn.get("content")) if isinstance(turn, dict) else None
        if role is None or not isinstance(content, str):
            return None, "a turn lacks a known 'from' or a string 'value'", f"turn {i}"
        messages.append(message(role, content))
    return messages, "", ""


def sharegpt_items(path: Path, report: Report):
    """{"conversations": [{"from": "human"|"gpt", "value"}]} (ShareGPT), one per line or a JSON array."""
    rows = (
        read_jsonl_file(path, report)
        if path.suffix in (".jsonl", ".gz")
        else records(read_json_file(path, report), path, report)
    )
    for where, row in rows:
        messages, reason, detail = sharegpt_conversations(row.get("conversations") if isinstance(row, dict) else None)
        if reason:
            report.skips.add(where, reason, detail)
            continue
        yield where, messages


def kdconv_items(path: Path, report: Report):
    """KdConv dialogues: speakers alternate and carry no roles, so the opener is the user."""
    data = read_json_file(path, report)
    for where, dialogue in records(data, path, report) if data is not None else ():
        turns = dialogue.get("messages") if isinstance(dialogue, dict) else None
        if not isinstance(turns, list) or not all(
            isinstance(t, dict) and isinstance(t.get("message"), str) for t in turns
        ):
            report.skips.add(where, "no 'messages' list of {message}")
            continue
        yield where, [message("user" if i % 2 == 0 else "assistant", t["message"]) for i, t in enumerate(turns)]


def medical_items(path: Path, report: Report):
    """The medical dialogue CSV (GBK): department,title,ask,answer -> patient asks, doctor answers."""
    text = read_text_file(path, report, encoding="gb18030")
    for where, row in csv_rows(text, path, report):
        ask, answer, title = (row.get(key) for key in ("ask", "answer", "title"))
        if not isinstance(ask, str) or not ask or not isinstance(answer, str) or not answer:
            report.skips.add(where, "missing 'ask' or 'answer'")
            continue
        title = title.strip() if isinstance(title, str) else ""
        prompt = ask if not title or title in ask else f"{title}\n{ask}"
        yield where, [message("user", prompt), message("assistant", answer)]


def gaokao_items(path: Path, report: Report):
    """GAOKAO-Bench {"example": [{question, answer, analysis}]} -> the question, answered with its explanation."""
    data = read_json_file(path, report)
    examples = data.get("example") if isinstance(data, dict) else None
    if data is not None and not isinstance(examples, list):
        report.skips.add(str(path), "no 'example' list")
    for where, item in records(examples, path, report) if isinstance(examples, list) else ():
        if not isinstance(item, dict) or not isinstance(item.get("question"), str):
            report.skips.add(where, "missing 'question'")
            continue
        answer = item.get("answer")
        answer = "".join(answer) if isinstance(answer, list) and all(isinstance(a, str) for a in answer) else answer
        analysis = item.get("analysis")
        analysis = analysis.strip() if isinstance(analysis, str) else ""
        if not isinstance(answer, str) or not answer.strip() or not analysis:
            report.skips.add(where, "missing 'answer' or 'analysis'")
            continue
        yield where, [message("user", item["question"]), message("assistant", f"{analysis}\n答案：{answer.strip()}")]


def agieval_items(path: Path, report: Report):
    """AGIEval {passage, question, options, label}: multiple choice, answered with the letter."""
    for where, row in read_jsonl_file(path, report):
        if not isinstance(row, dict) or not isinstance(row.get("question"), str):
            report.skips.add(where, "missing 'question'")
            continue
        label = row.get("label") or row.get("answer")
        label = "".join(label) if isinstance(label, list) and all(isinstance(x, str) for x in label) else label
        if not isinstance(label, str) or not label.strip():
            report.skips.add(where, "missing 'label'")
            continue
        options = row.get("options")
        options = "\n".join(o for o in options if isinstance(o, str)) if isinstance(options, list) else ""
        passage = row.get("passage") if isinstance(row.get("passage"), str) else ""
        prompt = "\n".join(p for p in (passage, row["question"], options) if p)
        yield where, [message("user", prompt), message("assistant", f"答案：{label.strip()}")]


def deepctrl_items(path: Path, report: Report):
    """Upstream deepctrl jsonl: {"history": [[q, a], ...], "q"|"input": str, "a"|"output": str}."""
    for where, row in read_jsonl_file(path, report):
        question = row.get("q", row.get("input")) if isinstance(row, dict) else None
        answer = row.get("a", row.get("output")) if isinstance(row, dict) else None
        if not isinstance(question, str) or not isinstance(answer, str):
            report.skips.add(where, "missing 'q'/'input' or 'a'/'output'")
            continue
        messages = history_messages(row.get("history"))
        if messages is None:
            report.skips.add(where, "'history' is not a list of [question, answer] strings")
            continue
        yield where, messages + [message("user", question), message("assistant", answer)]


def chat_jsonl_items(path: Path, report: Report):
    """Our own (and current upstream's) format: {"conversations": [{"role", "content"}]}."""
    for where, row in read_jsonl_file(path, report):
        messages = row.get("conversations") if isinstance(row, dict) else None
        reason, detail = check_messages(messages, "conversations")
        if reason:
            report.skips.add(where, reason, detail)
            continue
        yield where, [message(m["role"], m["content"]) for m in messages]


# name -> (glob under the raw folder, converter, output). The identity and medical sets are LoRA material:
# kept out of the general SFT mix so that the LoRA stage visibly teaches something new.
SFT_SOURCES = {
    "alpaca_zh": ("sft_zh/alpaca_zh_hikariming/*/*.json", alpaca_items, "sft"),
    "alpaca_gpt4_zh_demo": ("sft_zh/llamafactory_demo/alpaca_zh_demo.json", alpaca_items, "sft"),
    "kdconv": ("sft_zh/kdconv/*/*.json", kdconv_items, "sft"),
    "sharegpt_zh": ("sft_zh/sharegpt_zh_1k/*.jsonl", sharegpt_items, "sft"),
    "gaokao_bench": ("sft_zh/exams/gaokao_bench/*/*.json", gaokao_items, "sft"),
    "agieval_zh": ("sft_zh/exams/agieval_zh/*.jsonl", agieval_items, "sft"),
    "identity": ("identity/llamafactory_identity.json", identity_items, "lora_identity"),
    "medical_dialogue": ("sft_zh/medical_dialogue/*.csv", medical_items, "lora_medical"),
}
SFT_FILES = {
    "single": "sft_single.jsonl",
    "multi": "sft_multi.jsonl",
    "val": "sft_val.jsonl",
    "lora_identity": "lora_identity.jsonl",
    "lora_medical": "lora_medical.jsonl",
}



def clean_messages(messages: list[dict], max_chars: int) -> tuple[list[dict] | None, str]:
    """Normalise every message and keep the longest prefix of whole exchanges (ending with an assistant
    reply) within max_chars. Returns (messages, '') or (None, reason)."""
    if any(has_lone_surrogate(m["content"]) for m in messages):
        return None, "lone UTF-16 surrogate in a string"
    messages = [message(m["role"], normalize(m["content"], prose=False)) for m in messages]
    if any(not m["content"] for m in messages):
        return None, "empty message"
    if any(t in m["content"] for m in messages for t in ("<s>", "</s>")):
        return None, "contains the literal text <s> or </s>"
    if messages[0]["role"] == "assistant":
        messages = messages[1:]
    total, end = 0, 0
    for i, m in enumerate(messages):
        total += len(m["content"])
        if total > max_chars:
            break
        if m["role"] == "assistant":
            end = i + 1
    if end == 0:
        return None, f"no complete exchange within {max_chars} characters"
    return messages[:end], ""


def build_sft(
    raw, out, jsonl=(), sharegpt=(), deepctrl=(), ceval=None, max_chars=1024, val_fraction=0.02, bot_name="MiniMind",
    bot_author="MiniMind", strict=False, show_skips=3,
) -> None:
    """Build the SFT and LoRA jsonl files in `out` from the built-in sources under `raw` plus extra files in
    our chat format (`jsonl`), ShareGPT (`sharegpt`) and upstream deepctrl (`deepctrl`). Conversations
    whose questions appear in C-Eval val (`ceval`, default raw/ceval/val) are removed, and so are identity
    conversations that ask a question of evaluation/identity.py's held-out set."""
    raw_dir = Path(raw)
    inputs = [
        (name, sorted(raw_dir.glob(pattern)), reader, dest) for name, (pattern, reader, dest) in SFT_SOURCES.items()
    ]
    inputs += [(Path(p).stem, [Path(p)], chat_jsonl_items, "sft") for p in jsonl]
    inputs += [(Path(p).stem, [Path(p)], sharegpt_items, "sft") for p in sharegpt]
    inputs += [(Path(p).stem, [Path(p)], deepctrl_items, "sft") for p in deepctrl]
    guard = ceval_guard(raw_dir, ceval)
    held_out = {question_key(q) for q in IDENTITY_HELD_OUT}  # evaluation/identity.py asks these, never trained
    rows_by_split = {split: [] for split in SFT_FILES}
    seen, reports = SeenBefore(), []
    start = time.time()
    for name, paths, reader, dest in inputs:
        report = Report(name, skips=Skips(strict, show_skips))
        reports.append(report)
        extra = {"name": bot_name, "author": bot_author} if reader is identity_items else {}
        for path in tqdm(paths, desc=name, unit="file", disable=None, leave=False):
            if not path.exists():
                raise MiniMindError(f"{path}: no such file")
            report.files += 1
            for where, messages in reader(path, report, **extra):
                messages, reason = clean_messages(messages, max_chars)
                replies = [m["content"] for m in messages or [] if m["role"] == "assistant"]
                if not reason and reader is not identity_items and any(VENDOR_CLAIM.search(r) for r in replies):
                    reason = "reply claims to be another vendor's model"
                if (
                    not reason
                    and guard
                    and guard.hit("\n".join(m["content"] for m in messages if m["role"] != "assistant"))
                ):
                    reason = "question appears in C-Eval val"
                if not reason and dest == "lora_identity" and any(
                    question_key(m["content"]) in held_out for m in messages if m["role"] == "user"
                ):
                    reason = "question held out for the identity score"
                if not reason and seen(messages):
                    reason = "exact duplicate"
                if reason:
                    report.skips.add(where, reason)
                    continue
                report.kept += 1
                report.chars += sum(len(m["content"]) for m in messages)
                if dest != "sft":
                    split = dest
                elif is_val(messages[0]["content"], val_fraction):
                    split = "val"
                else:
                    split = "single" if len(replies) == 1 else "multi"
                rows_by_split[split].append({"conversations": messages})
    # The identity adapter should name the model when asked who it is, and only then. It learns "only then"
    # from as many ordinary conversations as it has identity ones, evenly spaced through the training
    # share (they stay in sft_single.jsonl too).
    identity, ordinary = rows_by_split["lora_identity"], rows_by_split["single"]
    if identity and ordinary:
        identity += ordinary[::max(1, len(ordinary) // len(identity))][:len(identity)]
    print(f"sft: read {sum(r.read for r in reports)}, kept {sum(r.kept for r in reports)} ({time.time() - start:.1f}s)")
    for report in reports:
        print(report.line())
    for split, rows in rows_by_split.items():
        path = Path(out) / SFT_FILES[split]
        write_jsonl(path, rows)
        print(f"  wrote {path}: {len(rows)} conversations")
