"""Tool use for the tiny model: a safe calculator tool (calculator.py), the Hermes/Qwen `<tool_call>` text
format a model writes its calls in (calls.py), and a seeded generator of Chinese everyday arithmetic word
problems with their tool-calling conversations, split by phrasing family into train and held-out
(problems.py; the families in money_families.py and quantity_families.py, their words in vocabulary.py, the
Problem type and the answer check in problem.py). Every module here is a leaf: standard library only."""
