"""The one error type the model/ package raises for bad input files and bad settings.

    from model.errors import MiniMindError
    try:
        model = load_model("out/full_sft_512.pth")
    except MiniMindError as error:      # also caught by `except ValueError` / `except Exception`
        print(error)                    # one line naming the file or field, e.g. "out/x.json: 'dim' must be ..."

A MiniMindError is a ValueError, so library callers (the server, tests, notebooks) catch it like any
other bad-value error. It is also a SystemExit carrying its message as the exit code, so a stage script
that does not catch it still ends the way a command-line tool should: the message as one line on
stderr, exit status 1, no traceback.
"""


class MiniMindError(ValueError, SystemExit):
    """A bad checkpoint, config, data file or setting, described in one line."""

    def __init__(self, message: str):
        super().__init__(message)
        self.code = message  # what the interpreter prints (and exits 1 with) when nothing catches it

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an exception's text (its type when it has none), cut to `limit` characters."""
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
