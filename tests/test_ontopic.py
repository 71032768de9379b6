"""evaluation/ontopic.py: the mechanical on-topic judge used by `2-eval.py --judge` and the quickstart."""
from evaluation.ontopic import FIRST_SENTENCE_CHARS, first_sentence, on_topic, topic_words


def test_topic_words_drop_function_and_instruction_words():
    assert topic_words("为什么天空是蓝色的？") == ["天空", "蓝色"]
    assert topic_words("解释什么是机器学习。") == ["机器", "器学", "学习"]
    assert topic_words("请用Python写一个函数") == ["函数", "python"]
    assert topic_words("这是什么？") == []  # nothing to be on topic about


def test_first_sentence_stops_at_the_first_sentence_end():
    assert first_sentence("\n天空是蓝的。因为散射！") == "天空是蓝的"
    assert first_sentence("。。\n") == ""
    assert len(first_sentence("长" * 500)) == FIRST_SENTENCE_CHARS


def test_on_topic_looks_only_at_the_first_sentence():
    question = "为什么天空是蓝色的？"
    assert on_topic(question, "天空散射蓝光。") == "天空"
    assert on_topic(question, "他推开门。天空很蓝。") is None  # the topic comes too late
    assert on_topic(question, "") is None
    assert on_topic("请用PYTHON写代码", "用 python 可以这样写") == "python"  # Latin words ignore case
