"""The tool scoreboard (evaluation/tools.py): a problem counts as right only when the final answer's last
number is the problem's answer, through the real tool loop; a false call is a call on an ordinary question;
the sign test counts discordant pairs only."""
import tooluse.agent as agent
import evaluation.tools as tools_eval
from conftest import tiny_config
from evaluation.tools import sign_test, tool_board
from model.model import MiniMindForCausalLM
from model.toolcall import render_call
from tooluse.problems import generate


def test_tool_board_counts_right_answers_through_the_tool_loop(tokenizer, monkeypatch):
    model = MiniMindForCausalLM(tiny_config(vocab_size=len(tokenizer), max_seq_len=1024)).eval()
    problems = generate(3, seed=5, split="held_out")
    # The model calls the calculator with the right expression for the first two problems and a wrong one
    # for the third; its final answer repeats the tool's result. With free numbers (no `allowed` rule) it
    # also gets the first one wrong. Without tools it answers "0". On the two ordinary questions it calls
    # the calculator once.
    calls = {p.question: render_call("calculator", {"expression": p.expression}) for p in problems[:2]}
    calls[problems[2].question] = render_call("calculator", {"expression": "1+1"})
    rules = []

    def fake_generate(model, prompts, max_new_tokens, allowed=None, **kwargs):
        rules.append(allowed)
        texts = []
        for prompt in map(tokenizer.decode, prompts):
            if "<s>tool" in prompt:  # the second round: answer with the number the tool returned
                texts.append(f"答案是{prompt.split('<s>tool')[-1].split('</s>')[0].strip()}。")
            elif allowed is None and problems[0].question in prompt:
                texts.append(render_call("calculator", {"expression": "1+2"}))
            else:
                texts.append(next(c for q, c in calls.items() if q in prompt))
        return [tokenizer.encode(t, add_special_tokens=False) for t in texts]

    answers = iter([["0"] * 3, [render_call("calculator", {"expression": "2*3"}), "你好"]])

    def fake_answer_all(model, tokenizer, questions, prompts, max_new_tokens, **kwargs):
        return [{"question": q, "answer": a, "tokens": 1, "ended": True} for q, a in zip(questions, next(answers))]

    monkeypatch.setattr(agent, "generate", fake_generate)
    monkeypatch.setattr(tools_eval, "answer_all", fake_answer_all)
    board = tool_board(model, tokenizer, problems, ["今天天气怎么样？", "你好"], max_new_tokens=300)
    assert board["with_tools"] == {"right": 2, "of": 3, "share": 2 / 3}
    assert [r["right"] for r in board["problems"]] == [True, True, False]
    assert board["problems"][2]["call"] == "1+1"
    assert board["free_numbers"]["right"] == 1 and board["problems"][0]["right_free"] is False
    assert rules[0] is not None and rules[-1] is None  # the tool loop copies numbers unless told not to
    assert board["called"]["right"] == 3 and board["without_tools"]["right"] == 0
    assert board["false_calls"] == {"right": 1, "of": 2, "share": 0.5}
    assert board["false_call_questions"] == ["今天天气怎么样？"]


def test_sign_test_uses_discordant_pairs_only():
    same = [True, False] * 10
    assert sign_test(same, same) == {"only_a": 0, "only_b": 0, "p": 1.0}
    a = [True] * 10 + [False] * 2
    b = [False] * 10 + [True] * 2
    result = sign_test(a, b)
    assert (result["only_a"], result["only_b"]) == (10, 2)
    assert abs(result["p"] - 2 * sum(__import__("math").comb(12, i) for i in range(3)) / 2 ** 12) < 1e-12
