"""Does the model name itself? The share of held-out "who are you" paraphrases whose greedy answer states
the model's name: the figure the identity LoRA adapter is judged by.

    board = identity_score(model, tokenizer, HELD_OUT_QUESTIONS)   # {"named": 31, "total": 32, "answers": [...]}
    python -m evaluation.identity --preset tiny --weight lora_identity      # adapter on, adapter off, base check
    python -m evaluation.identity --ckpt out/lora_identity_256x4 --json out/score_lora_identity.json

HELD_OUT_QUESTIONS are never trained on: data/sft.py drops every identity conversation whose question has
the key of one of them (question_key: case, spaces, punctuation, a leading greeting and trailing particles
ignored), so the score says whether the adapter learned to answer "I am MiniMind" to a question it has not
seen, not whether it memorised its training strings. tests/test_identity.py checks that on the built data.

An answer names the model when the name occurs, case and spaces ignored, within its first NAME_WITHIN
characters and not right after a negation (不是, 不叫, not): "我是MiniMind，..." and "您好！我是由 MiniMind
开发的助手" count; "我不是MiniMind" and a paragraph that gets to the name only at its end do not.

For an adapter, identity_board also asks the same questions with the adapter switched off and checks that
the logits are then bit for bit those of the base checkpoint loaded on its own: the adapter adds a skill
without changing the base model's chat.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep, not spin: set before torch loads
import argparse
import copy
import json
import re
import sys
from pathlib import Path

import torch

from evaluation.scoreboard import answer_all, prompt_ids
from model.chat import prompt_budget
from model.checkpoint import atomic_write
from model.cli import add_model_args, load_with_flags, resolve_checkpoint
from model.errors import MiniMindError, first_line, run_main
from model.generate import context_length
from model.runtime import DeviceError, pick_device, pick_dtype
from model.tokenizer import load_tokenizer

BOT_NAME = "MiniMind"  # data_process.py sft --bot_name: the name the identity data gives the model
NAME_WITHIN = 50
MAX_NEW_TOKENS = 40

# Ways to ask the model who it is, written for this score and kept out of the LoRA training data. A few
# are yes/no questions and questions about other models: the answer still has to say which model it is.
HELD_OUT_QUESTIONS = [
    "你是谁？",
    "介绍一下你自己",
    "你叫啥？",
    "请问您怎么称呼？",
    "你是哪个模型？",
    "你叫什么名字？",
    "能说说你是谁吗？",
    "我该怎么叫你？",
    "你的名字叫什么？",
    "跟我介绍下你自己吧。",
    "自我介绍一下。",
    "你是什么AI？",
    "你是哪家的模型？",
    "请问你是什么助手？",
    "你到底是谁？",
    "我在和谁说话？",
    "你是个什么程序？",
    "你是聊天机器人吗？",
    "你是不是ChatGPT？",
    "你有没有名字？",
    "请报上你的名字。",
    "你怎么称呼自己？",
    "告诉我你是谁。",
    "嗨，你是？",
    "你是什么语言模型？",
    "请做个自我介绍。",
    "what's your name?",
    "Who am I talking to?",
    "Please introduce yourself.",
    "Which model are you?",
    "What should I call you?",
    "Are you an AI assistant?",
]

# Questions that are not about the model: an adapter that answers them with its name too has learned
# "always say MiniMind" rather than "say who you are when asked". Reported beside the score, not in it.
ORDINARY_QUESTIONS = [
    "为什么天空是蓝色的？",
    "推荐一些中国的美食。",
    "解释什么是机器学习。",
    "如果明天下雨，我应该如何出门？",
    "比较一下猫和狗作为宠物的优缺点。",
    "一年有几个季节？",
    "怎样才能睡个好觉？",
    "请写一句关于春天的诗。",
]

_NOT_WORD = re.compile(r"[^0-9a-z\u4e00-\u9fff]+")
_GREETING = re.compile(r"^(你好|您好|嗨|哈喽|hi|hello|hey)+(呀|啊|哦)?")
_PARTICLES = re.compile(r"(呀|啊|呢|吧|哦|嘛|吗)+$")
_NEGATIONS = ("不是", "不叫", "并非", "not")


def question_key(question: str) -> str:
    """What two questions must share to count as the same question: lower case, only letters, digits and
    Chinese characters, without a leading greeting or trailing particles. "你好，你是谁呀？" -> "你是谁"."""
    key = _NOT_WORD.sub("", question.lower())
    stripped = _PARTICLES.sub("", _GREETING.sub("", key))
    return stripped or key


def names_itself(answer: str, name: str = BOT_NAME) -> bool:
    """Whether `answer` states the name early on and not as a denial (see the module docstring)."""
    text = re.sub(r"\s+", "", answer).lower()[:NAME_WITHIN + len(name)]
    target = re.sub(r"\s+", "", name).lower()
    start = text.find(target)
    while start != -1:
        if start < NAME_WITHIN and not text[:start].endswith(_NEGATIONS):
            return True
        start = text.find(target, start + 1)
    return False


@torch.no_grad()
def identity_score(model, tokenizer, questions=HELD_OUT_QUESTIONS, name: str = BOT_NAME,
                   max_new_tokens: int = MAX_NEW_TOKENS) -> dict:
    """Greedy answers of `model` to `questions` in the chat template, and how many name it:
    {"named", "total", "share", "answers": [{"question", "answer", "named"}]}."""
    if not questions:
        raise MiniMindError("identity_score needs at least one question")
    budget = prompt_budget(context_length(model.config), max_new_tokens)
    prompts = [prompt_ids(tokenizer, q, False, budget) for q in questions]
    answers = answer_all(model, tokenizer, list(questions), prompts, max_new_tokens)  # temperature 0: greedy
    rows = [{"question": a["question"], "answer": a["answer"], "named": names_itself(a["answer"], name)}
            for a in answers]
    named = sum(r["named"] for r in rows)
    return {"named": named, "total": len(rows), "share": named / len(rows), "answers": rows}


@torch.no_grad()
def same_logits(model, reference, prompts: list[list[int]]) -> bool:
    """Whether `model` and `reference` give bit-identical logits on every prompt (each run on its own)."""
    device = next(reference.parameters()).device
    for ids in prompts:
        x = torch.tensor([ids], device=device)
        if not torch.equal(model(input_ids=x).logits, reference(input_ids=x).logits):
            return False
    return True


def identity_board(base, adapter_dir, tokenizer, name: str = BOT_NAME, questions=HELD_OUT_QUESTIONS,
                   max_new_tokens: int = MAX_NEW_TOKENS) -> dict:
    """The adapter in `adapter_dir` on a copy of the model `base` (left as it is), scored with the adapter
    on and off, and whether adapter-off logits equal `base`'s own on the questions' prompts:
    {"adapter": identity_score, "adapter_off": identity_score, "adapter_off_is_base": bool, "ordinary":
    identity_score of ORDINARY_QUESTIONS with the adapter on}."""
    from peft import PeftModel

    try:
        adapted = PeftModel.from_pretrained(copy.deepcopy(base), str(adapter_dir)).eval()
    except Exception as error:  # missing or unreadable weights, shapes of another base
        raise MiniMindError(f"{adapter_dir}: cannot apply the LoRA adapter ({first_line(error, 200)})") from None
    board = {"name": name, "adapter_dir": str(adapter_dir),
             "adapter": identity_score(adapted, tokenizer, questions, name, max_new_tokens),
             "ordinary": identity_score(adapted, tokenizer, ORDINARY_QUESTIONS, name, max_new_tokens)}
    budget = prompt_budget(context_length(base.config), max_new_tokens)
    prompts = [prompt_ids(tokenizer, q, False, budget) for q in questions]
    with adapted.disable_adapter():
        board["adapter_off"] = identity_score(adapted, tokenizer, questions, name, max_new_tokens)
        board["adapter_off_is_base"] = same_logits(adapted, base, prompts)
    return board


def board_line(board: dict) -> str:
    """One line for a log: the named shares with the adapter on and off, and the base check."""
    on, off, ordinary = board["adapter"], board["adapter_off"], board["ordinary"]
    return (f"identity: names itself ({board['name']}) on {on['named']} of {on['total']} held-out questions "
            f"({100 * on['share']:.0f}%) with the adapter, {off['named']} ({100 * off['share']:.0f}%) without; "
            f"adapter off = base model, logits bit for bit: {'yes' if board['adapter_off_is_base'] else 'NO'}; "
            f"with the adapter it also names itself on {ordinary['named']} of {ordinary['total']} ordinary questions")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    add_model_args(parser, default_weight="lora_identity", quantize=False)
    parser.add_argument("--name", default=BOT_NAME, help="the name the answers should state (default %(default)s)")
    parser.add_argument("--max_new_tokens", type=int, default=MAX_NEW_TOKENS, help="token budget per answer")
    parser.add_argument("--json", default=None, help="also write the board, answers included, to this file")
    parser.add_argument("--show", type=int, default=0, help="print the first N answers")
    args = parser.parse_args(argv)
    path, adapter = resolve_checkpoint(args)
    try:
        device = pick_device(args.device)
        dtype = pick_dtype(args.dtype, device)[0]
    except DeviceError as error:
        raise MiniMindError(str(error))
    base = load_with_flags(path, args).to(device=device, dtype=dtype).eval()
    tokenizer = load_tokenizer(args.tokenizer)
    if adapter is None:
        board = {"name": args.name, "checkpoint": str(path),
                 "model": identity_score(base, tokenizer, HELD_OUT_QUESTIONS, args.name, args.max_new_tokens)}
        s = board["model"]
        print(f"identity: {path} names itself ({args.name}) on {s['named']} of {s['total']} held-out questions "
              f"({100 * s['share']:.0f}%)")
        answers = s["answers"]
    else:
        board = identity_board(base, adapter, tokenizer, args.name, HELD_OUT_QUESTIONS, args.max_new_tokens)
        board["checkpoint"] = str(path)
        print(f"{adapter} on {path}")
        print(board_line(board))
        answers = board["adapter"]["answers"]
    for row in answers[:args.show]:
        print(f"  👶 {row['question']}\n  🤖 {row['answer']}\n  [{'named' if row['named'] else 'not named'}]")
    if args.json:
        text = json.dumps(board, ensure_ascii=False, indent=1)
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        print(f"wrote {args.json}")
    if adapter is not None and not board["adapter_off_is_base"]:
        sys.exit("error: with the adapter off the logits differ from the base model's")


if __name__ == "__main__":
    run_main(main)
