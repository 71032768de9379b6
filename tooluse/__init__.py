"""Tool use for the tiny model: a safe calculator tool (calculator.py); a seeded generator of Chinese everyday
arithmetic word problems with their tool-calling conversations, split into train, held-out phrasings and
held-out families (problems.py; the families in *_families.py, their wording in phrasings.json, their names,
goods and units in vocabulary.py, the Problem type, the phrasing draw and the answer check in problem.py);
and the tool loop that runs a model's calls (agent.py). The text format of a call is model/toolcall.py's."""
