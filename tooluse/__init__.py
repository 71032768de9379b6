"""Tool use for the tiny model: a safe calculator tool (calculator.py), the Hermes/Qwen `<tool_call>` text
format a model writes its calls in (calls.py), and a seeded generator of Chinese everyday arithmetic word
problems with their tool-calling conversations, split into train, held-out phrasings and held-out families
(problems.py; the families in *_families.py, their words in vocabulary.py, the
Problem type and the answer check in problem.py). Every module here is a leaf: standard library only."""
