"""Does an answer stay on its question's topic? A fixed, mechanical rule, so that two models can be
compared on many prompts by the same judge instead of by impressions.

    on_topic("为什么天空是蓝色的？", "天空是蓝色的，因为阳光被散射。")   # -> "天空"
    on_topic("为什么天空是蓝色的？", "他推开门，看见一只猫。")           # -> None

An answer is on topic when its first sentence contains a topic word of the question and is not an echo:
- a pair of neighbouring Chinese characters from the question, unless either character is a function
  character (的, 是, 什, 么, 一, ...) or the pair is an instruction word (解释, 推荐, 比较, ...): for
  "为什么天空是蓝色的？" the topic words are 天空 and 蓝色;
- or a Latin word of three letters or more from the question ("Python").
An echo is a first sentence that is a near-copy of the question: with punctuation and spaces removed, at
least ECHO_SHARE of its character bigrams occur in the question ("为什么天空是蓝色的" answered with
"天空为什么是蓝色的" is an echo; "天空是蓝色的，因为阳光被散射" is not). A model that only repeats the
question would otherwise score as on topic on every question.

The rule cannot tell a true sentence from a false one, and it misses answers that use other words for
the subject (or a one-character one: 猫). What it does measure is the thing a learner sees first:
whether the reply is about what was asked, or text from somewhere else.
"""
import re

# Grammatical characters: a pair containing one is rarely the subject of a question.
FUNCTION_CHARS = set("的了吗呢吧啊呀是在和与或及把被就都也很还这那哪些么什怎何为请你我他她它们个一得地着过要会能可该以将于从对向给")
# Words that say what to do with the subject rather than what the subject is.
INSTRUCTION_WORDS = {
    "解释", "描述", "推荐", "比较", "告诉", "生成", "列出", "给出", "提供", "总结", "翻译", "回答", "问题",
    "以下", "下面", "句子", "段落", "文本", "简要", "简单", "详细", "如果", "所以", "因此", "但是", "然后",
    "方法", "优缺", "缺点", "优点", "关于", "使用", "下列", "给定", "提取", "找出", "选择", "设计", "创造",
    "创建", "编写", "写出", "分类", "识别", "判断", "确定", "例子", "列表", "知道", "已经", "进行", "需要",
    "可能", "现在",
}
_HAN_RUN = re.compile(r"[\u4e00-\u9fff]+")
_LATIN_WORD = re.compile(r"[A-Za-z]{3,}")
_SENTENCE_END = re.compile(r"[。！？!?；;\n]")
_WORD_CHARS = re.compile(r"[\u4e00-\u9fffA-Za-z0-9]+")
FIRST_SENTENCE_CHARS = 80
ECHO_SHARE = 0.7  # a run-on answer without punctuation is judged on its first 80 characters


def topic_words(question: str) -> list[str]:
    """The question's topic words, in order of appearance, without repeats."""
    words = []
    for run in _HAN_RUN.findall(question):
        for a, b in zip(run, run[1:]):
            pair = a + b
            if a not in FUNCTION_CHARS and b not in FUNCTION_CHARS and pair not in INSTRUCTION_WORDS:
                words.append(pair)
    words += [w.lower() for w in _LATIN_WORD.findall(question)]
    return list(dict.fromkeys(words))


def first_sentence(answer: str) -> str:
    """The answer up to its first sentence end (or its first FIRST_SENTENCE_CHARS characters)."""
    for part in _SENTENCE_END.split(answer):
        if part.strip():
            return part.strip()[:FIRST_SENTENCE_CHARS]
    return ""


def _bigrams(text: str) -> list[str]:
    letters = "".join(_WORD_CHARS.findall(text.lower()))
    return [letters[i:i + 2] for i in range(len(letters) - 1)]


def is_echo(question: str, answer: str) -> bool:
    """The answer's first sentence is a near-copy of the question (see the module's docstring)."""
    said = _bigrams(first_sentence(answer))
    if not said:
        return False
    asked = set(_bigrams(question))
    return sum(pair in asked for pair in said) >= ECHO_SHARE * len(said)


def judge(question: str, answer: str) -> tuple[str, str | None]:
    """("on topic", word), ("echo", word) or ("off topic", None) for one answer."""
    sentence = first_sentence(answer).lower()
    word = next((w for w in topic_words(question) if w in sentence), None)
    if word is None:
        return "off topic", None
    return ("echo", word) if is_echo(question, answer) else ("on topic", word)


def on_topic(question: str, answer: str) -> str | None:
    """The first topic word of `question` found in the first sentence of `answer`, or None (also when the
    sentence only echoes the question)."""
    verdict, word = judge(question, answer)
    return word if verdict == "on topic" else None
