"""The calculator tool: its schema (CALCULATOR, as clients send it), a safe evaluator of arithmetic text
(calculate), the number formatting every answer uses (format_number), and the registry the server calls
tools through (run_tool).

    calculate("(3+4)*2")          -> "14"
    calculate("１２．５×４÷（２＋３）=")  -> "10"
    calculate("1/0")              -> "错误：除数为零"
    run_tool("calculator", {"expression": "7/3"})  -> "2.333333"

The text comes from a model or a client, so it is hostile until proven otherwise: nothing here evals it.
A small recursive-descent parser accepts exactly what the tool's description promises (numbers, + - * /,
parentheses, unary signs). It is used rather than a walk over Python's ast because it owns its grammar:
none of Python's literal forms slip through (1_000, 0x10, 1j, 1e309), nesting is counted by the parser
instead of left to Python's recursion limit, and every failure has its own short reason. Arithmetic is
exact, in fractions, so 0.1+0.2 prints 0.3 with no float noise. Bounds keep every call cheap: at most 200
characters, parentheses nested at most 20 deep, and no number, intermediate or final, above 1e15 in size.
Any failure comes back as a string that starts with "错误：" and gives a short reason, never as an exception.
"""

import math
import re
from fractions import Fraction

CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "计算一个算术表达式的值，支持 + - * / 和括号",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "算术表达式，例如 (3+4)*2"}},
            "required": ["expression"],
        },
    },
}

MAX_LENGTH = 200      # characters of the expression, spaces included
MAX_DEPTH = 20        # parentheses nested
MAX_VALUE = 10 ** 15  # largest size of any number, intermediate or final

# full-width digits and operators, and the × ÷ a person types, to their ASCII forms
_NORMALISE = str.maketrans({
    "（": "(", "）": ")", "＋": "+", "－": "-", "−": "-", "×": "*", "＊": "*", "÷": "/", "／": "/",
    "．": ".", "＝": "=", "\u3000": " ", **{chr(ord("０") + d): str(d) for d in range(10)},
})

# one token: a number (12, 12.5, 12., .5), an operator or parenthesis, a run of spaces, or anything else
_TOKEN = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)|([-+*/()])|(\s+)|(.)", re.S)


class _Error(Exception):
    """A reason the expression cannot be computed; calculate turns it into an 错误： string."""


def _number(text: str) -> Fraction:
    # exact arithmetic in fractions: 0.1+0.2 is 0.3, and 1/3*3 is 1, so answers carry no float noise
    whole, _, frac = text.partition(".")
    value = Fraction(int(whole or "0") * 10 ** len(frac) + int(frac or "0"), 10 ** len(frac))
    return _bounded(value)


def _bounded(value: Fraction) -> Fraction:
    if abs(value) > MAX_VALUE:
        raise _Error("数值过大（超过10的15次方）")
    return value


class _Parser:
    """expr := term (('+'|'-') term)*;  term := unary (('*'|'/') unary)*;  unary := ('+'|'-')* atom;
    atom := number | '(' expr ')'. Every number is a Fraction; every operator's result is bounded."""

    def __init__(self, tokens: list):
        self.tokens, self.i, self.depth = tokens, 0, 0

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self):
        token = self.peek()
        self.i += 1
        return token

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = _bounded(value + self.term() if self.take() == "+" else value - self.term())
        return value

    def term(self) -> Fraction:
        value = self.unary()
        while self.peek() in ("*", "/"):
            op = self.take()
            other = self.unary()
            if op == "/" and other == 0:
                raise _Error("除数为零")
            value = _bounded(value * other if op == "*" else value / other)
        return value

    def unary(self) -> Fraction:
        negative = False
        while self.peek() in ("+", "-"):  # a loop, not recursion: "------1" costs no stack
            negative ^= self.take() == "-"
        value = self.atom()
        return -value if negative else value

    def atom(self) -> Fraction:
        token = self.take()
        if isinstance(token, Fraction):
            return token
        if token == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _Error(f"括号嵌套过深（最多{MAX_DEPTH}层）")
            value = self.expr()
            if self.take() != ")":
                raise _Error("括号不匹配")
            self.depth -= 1
            return value
        if token is None:
            raise _Error("表达式不完整")
        raise _Error(f"'{token}' 的位置不对")


def _tokens(text: str) -> list:
    tokens = []
    for m in _TOKEN.finditer(text):
        number, op, _space, other = m.groups()
        if number is not None:
            tokens.append(_number(number))
        elif op is not None:
            tokens.append(op)
        elif other is not None:
            raise _Error(f"不支持的符号 '{other}'")
    return tokens


def _evaluate(expression) -> Fraction:
    """The exact value of the expression, or _Error with the reason."""
    if not isinstance(expression, str):
        raise _Error("表达式必须是字符串")
    if len(expression) > MAX_LENGTH:  # before any other work: a 10 MB string costs nothing more
        raise _Error(f"表达式过长（最多{MAX_LENGTH}个字符）")
    text = expression.translate(_NORMALISE).strip()
    if text.endswith("="):  # "3+4=" as a person writes it
        text = text[:-1]
    tokens = _tokens(text)
    if not tokens:
        raise _Error("表达式为空")
    parser = _Parser(tokens)
    value = parser.expr()
    rest = parser.peek()
    if rest == ")":
        raise _Error("括号不匹配")
    if isinstance(rest, Fraction):
        raise _Error("两个数之间缺少运算符")
    if rest is not None:
        raise _Error(f"'{rest}' 的位置不对")
    return value


def calculate(expression: str) -> str:
    """The value of an arithmetic expression as text ("292", "12.5", "0.333333"), or "错误：<reason>"."""
    try:
        return format_number(_evaluate(expression))
    except _Error as e:
        return f"错误：{e}"
    except (RecursionError, MemoryError, ValueError, ArithmeticError):  # belt and braces: the bounds above
        return "错误：无法计算这个表达式"                                     # should make these unreachable


def format_number(x) -> str:
    """A number as a person writes it: integers (and floats integral within 1e-9 relative) with no decimal
    point, anything else rounded to at most 6 decimals with trailing zeros stripped; never scientific
    notation, and never "-0"."""
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        r = round(x)
        if abs(x - r) <= 1e-9 * abs(x):
            return str(r)
        x = Fraction(x)  # the float's exact value, so the rounding below is decimal and exact
    if isinstance(x, int):  # bool too: True is 1
        return str(int(x))
    q = Fraction(x)
    # |q| in millionths, rounded half up, then split into whole part and 6 decimals
    millionths = (abs(q.numerator) * 2 * 10 ** 6 + q.denominator) // (2 * q.denominator)
    whole, frac = divmod(millionths, 10 ** 6)
    text = str(whole) + ("." + f"{frac:06d}".rstrip("0") if frac else "")
    return "-" + text if q < 0 and millionths else text


# --- the registry: a tool's name -> (its schema, the function called with its required arguments in order)

TOOLS = {"calculator": calculate}
SCHEMAS = {"calculator": CALCULATOR}

_JSON_TYPES = {"string": str, "number": (int, float), "integer": int, "boolean": bool, "object": dict,
               "array": list}


def run_tool(name: str, arguments) -> str:
    """Call the tool `name` with `arguments` (a dict, as parsed from a tool call) and return its result, or
    "错误：<reason>" for an unknown tool or a missing or ill-typed argument. Never raises."""
    if not isinstance(name, str) or name not in TOOLS:
        return f"错误：没有名为 {repr(name)[:40]} 的工具"
    if not isinstance(arguments, dict):
        return "错误：参数必须是一个 JSON 对象"
    params = SCHEMAS[name]["function"]["parameters"]
    for key in params["required"]:
        if key not in arguments:
            return f"错误：缺少参数 '{key}'"
        kind, value = params["properties"][key]["type"], arguments[key]
        if not isinstance(value, _JSON_TYPES[kind]) or (isinstance(value, bool) and kind != "boolean"):
            return f"错误：参数 '{key}' 的类型应为 {kind}"
    try:
        return TOOLS[name](*(arguments[key] for key in params["required"]))
    except Exception:  # a tool's own bug must not take the server down with it
        return "错误：工具运行失败"
