"""The one error type the model/ package raises for bad input files and bad settings.

    from model.errors import MiniMindError
    try:
        model = load_model("out/full_sft_512x8.pth")
    except MiniMindError as error:      # also caught by `except ValueError` / `except Exception`
        print(error)                    # one line naming the file or field, e.g. "out/x.json: 'dim' must be ..."

A MiniMindError is a ValueError, so library callers (the server, tests, notebooks) catch it like any
other bad-value error. It is also a SystemExit carrying its message as the exit code, so a stage script
that does not catch it still ends the way a command-line tool should: the message as one line on
stderr, exit status 1, no traceback.
"""


# Defined in model/LMConfig.py, which must stay importable on its own inside exported model folders.
from model.LMConfig import MiniMindError  # noqa: E402  (re-exported: import it from here)

__all__ = ["MiniMindError", "first_line"]


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an exception's text (its type when it has none), cut to `limit` characters."""
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
