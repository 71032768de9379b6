"""MiniMind model configuration: one typed config, named presets, command-line overrides.

    from model.LMConfig import LMConfig
    cfg = LMConfig()                                   # small-T, the original 26.88M model
    cfg = LMConfig.from_preset("moe", max_seq_len=1024)

Every stage script calls `add_config_args(parser)` and `config_from_args(args)`, so
`--preset small --n_layers 4` works everywhere, and the resulting config is saved next to
every checkpoint (see model/checkpoint.py).
"""
import argparse
import math
import reprlib

from transformers import PretrainedConfig


class MiniMindError(Exception):
    """A bad checkpoint, config, data file or setting, described in one line (see model/errors.py, which
    exports it, and whose run_main turns it into that line on stderr and exit status 1 in every script).
    Defined here because this file is copied alone into exported model folders, where it may import
    nothing from the repository."""


def _round_up(x: int, multiple: int) -> int:
    return multiple * ((x + multiple - 1) // multiple)


class LMConfig(PretrainedConfig):
    model_type = "minimind"
    # The names transformers' generic code (generation, peft, trl) looks for.
    attribute_map = {
        "hidden_size": "dim",
        "num_hidden_layers": "n_layers",
        "num_attention_heads": "n_heads",
        "num_key_value_heads": "n_kv_heads",
        "max_position_embeddings": "max_seq_len",
        "intermediate_size": "hidden_dim",
    }

    def __init__(
        self,
        dim: int = 512,
        n_layers: int = 8,
        n_heads: int = 16,
        n_kv_heads: int = 8,
        vocab_size: int = 6400,
        hidden_dim: int = None,  # FFN width; None -> SwiGLU rule from dim (1408 at dim 512)
        multiple_of: int = 64,
        norm_eps: float = 1e-5,
        max_seq_len: int = 512,
        rope_theta: float = 1e4,
        # RoPE scaling for contexts longer than max_seq_len: None, "linear", "ntk" or "yarn",
        # stretching the trained context by rope_factor. Without it, generation slides its window.
        rope_scaling_type: str = None,
        rope_factor: float = 4.0,
        dropout: float = 0.0,
        flash_attn: bool = True,  # use torch scaled_dot_product_attention; False -> plain attention
        # Mixture of experts (DeepSeek-style: shared experts + top-k routed experts)
        use_moe: bool = False,
        n_routed_experts: int = 4,
        n_shared_experts: int = 1,  # always-on experts; 0 disables them
        num_experts_per_tok: int = 2,
        aux_loss_alpha: float = 0.01,
        seq_aux: bool = True,  # balance loss per sequence (True) or over the whole batch (False)
        norm_topk_prob: bool = True,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        pad_token_id: int = 0,
        tie_word_embeddings: bool = True,
        **kwargs,
    ):
        # Sizes first, so a wrong one is named here instead of failing as arithmetic below.
        sizes = dict(dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads, vocab_size=vocab_size,
                     multiple_of=multiple_of, max_seq_len=max_seq_len)
        if hidden_dim is not None:
            sizes["hidden_dim"] = hidden_dim
        if use_moe:
            sizes.update(n_routed_experts=n_routed_experts, num_experts_per_tok=num_experts_per_tok)
        for name, value in sizes.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise MiniMindError(f"'{name}' must be a positive integer, got {reprlib.repr(value)}")
        self.dim = dim
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.vocab_size = vocab_size
        self.multiple_of = multiple_of
        self.hidden_dim = hidden_dim if hidden_dim else _round_up(int(2 * 4 * dim / 3), multiple_of)
        self.norm_eps = norm_eps
        self.max_seq_len = max_seq_len
        self.rope_theta = rope_theta
        self.rope_scaling_type = rope_scaling_type
        self.rope_factor = rope_factor
        self.dropout = dropout
        self.flash_attn = flash_attn
        self.use_moe = use_moe
        self.n_routed_experts = n_routed_experts
        self.n_shared_experts = int(n_shared_experts)
        self.num_experts_per_tok = num_experts_per_tok
        self.aux_loss_alpha = aux_loss_alpha
        self.seq_aux = seq_aux
        self.norm_topk_prob = norm_topk_prob
        if dim % n_heads or n_heads % n_kv_heads:
            raise MiniMindError(f"dim ({dim}) must divide by n_heads ({n_heads}), and n_heads by n_kv_heads ({n_kv_heads})")
        if use_moe and not 1 <= num_experts_per_tok <= n_routed_experts:
            raise MiniMindError(f"num_experts_per_tok ({num_experts_per_tok}) must be in 1..n_routed_experts ({n_routed_experts})")
        if rope_scaling_type not in (None, "linear", "ntk", "yarn"):
            raise MiniMindError(f"rope_scaling_type must be linear, ntk or yarn, got {reprlib.repr(rope_scaling_type)}")
        kwargs.pop("scoring_func", None)  # older configs name the only router MiniMind has (softmax)
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "LMConfig":
        if name not in PRESETS:
            raise MiniMindError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def tag(self) -> str:
        """Checkpoint name suffix used by every stage: width x depth, and _moe for a mixture of experts, as in
        out/pretrain_512x8.pth or out/pretrain_640x8_moe.pth. Two shapes that share a width get two names."""
        return f"{self.dim}x{self.n_layers}" + ("_moe" if self.use_moe else "")


# The sizes of the original MiniMind family, plus `tiny` for CPU runs and tests.
PRESETS = {
    "small-T": dict(),  # 26.88M, vocab 6400
    "small": dict(vocab_size=32000, dim=640),  # ~56M
    "base": dict(vocab_size=32000, dim=1024, n_layers=16),  # ~218M
    "moe": dict(vocab_size=32000, dim=640, use_moe=True, n_shared_experts=1, n_routed_experts=4, num_experts_per_tok=2),
    "tiny": dict(dim=256, n_layers=4, n_heads=8, n_kv_heads=4, max_seq_len=256),  # 4.59M: the 20-minute CPU run
    "mini": dict(dim=384, n_layers=6, n_heads=6, n_kv_heads=2, max_seq_len=256),  # the 2-hour CPU run
}


def count_parameters(model) -> tuple[int, int]:
    """(total, active per token). Tied embeddings count once; for MoE only the top-k routed experts are active."""
    total = sum(p.numel() for p in model.parameters())
    cfg = model.config
    if not cfg.use_moe:
        return total, total
    expert = sum(p.numel() for p in model.model.layers[0].mlp.experts[0].parameters())
    idle = cfg.n_layers * expert * (cfg.n_routed_experts - cfg.num_experts_per_tok)
    return total, total - idle


def describe(model) -> str:
    total, active = count_parameters(model)
    if total == active:
        return f"{total / 1e6:.2f}M parameters"
    return f"{total / 1e6:.2f}M parameters ({active / 1e6:.2f}M active per token)"


# ----------------------------------------------------------------------------- command line

_FIELDS = {  # field -> type, for overrides like --dim 640 --use_moe true
    "dim": int, "n_layers": int, "n_heads": int, "n_kv_heads": int, "vocab_size": int, "hidden_dim": int,
    "multiple_of": int, "norm_eps": float, "max_seq_len": int, "rope_theta": float, "dropout": float,
    "flash_attn": bool, "use_moe": bool, "n_routed_experts": int, "n_shared_experts": int,
    "num_experts_per_tok": int, "aux_loss_alpha": float, "seq_aux": bool,
    "norm_topk_prob": bool, "rope_scaling_type": str, "rope_factor": float,
}


def parse_bool(text: str) -> bool:
    """An on/off flag's value, as every script reads one: 1/true/yes/on or 0/false/no/off, any case."""
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


_FIELD_HELP = {  # what each field does; add_config_args appends its default and choices
    "dim": "hidden size (model width); must divide by --n_heads",
    "n_layers": "transformer blocks",
    "n_heads": "attention (query) heads",
    "n_kv_heads": "key/value heads (grouped-query attention); must divide --n_heads",
    "vocab_size": "embedding rows; at least the tokenizer's size",
    "hidden_dim": "FFN width (None: 8/3 * dim rounded up to --multiple_of, 1408 at dim 512)",
    "multiple_of": "the FFN width rounds up to a multiple of this",
    "norm_eps": "RMSNorm epsilon",
    "max_seq_len": "trained context in tokens",
    "rope_theta": "RoPE base",
    "dropout": "dropout in attention and FFN during training",
    "flash_attn": "use torch's scaled_dot_product_attention; false: plain attention",
    "use_moe": "mixture of experts FFN (DeepSeek-style: shared + routed experts)",
    "n_routed_experts": "MoE: routed experts per layer",
    "n_shared_experts": "MoE: always-on experts per layer; 0 disables them",
    "num_experts_per_tok": "MoE: routed experts each token uses (top-k)",
    "aux_loss_alpha": "MoE: weight of the load-balancing loss",
    "seq_aux": "MoE: balance loss per sequence (true) or over the whole batch (false)",
    "norm_topk_prob": "MoE: renormalise the top-k routing weights to sum to 1",
    "rope_scaling_type": "stretch RoPE past max_seq_len by --rope_factor (None: no scaling)",
    "rope_factor": "context stretch of --rope_scaling_type",
}
_CHOICES = {"rope_scaling_type": ["linear", "ntk", "yarn"]}


def add_config_args(parser: argparse.ArgumentParser, default_preset: str = "small-T") -> None:
    """--preset and one flag per config field. A field flag left out takes the preset's value; the help
    shows the small-T value (LMConfig's own default) and what each preset changes."""
    import inspect

    group = parser.add_argument_group("model config (a preset, then field-by-field overrides)")
    sizes = "; ".join(f"{name}: {', '.join(f'{k}={v}' for k, v in fields.items()) or 'the defaults'}"
                      for name, fields in PRESETS.items())
    group.add_argument("--preset", default=default_preset, choices=list(PRESETS),
                       help=f"named model size, default %(default)s ({sizes})")
    signature = inspect.signature(LMConfig.__init__).parameters
    for name, kind in _FIELDS.items():
        default = signature[name].default
        shown = "true/false, " if kind is bool else f"one of {', '.join(_CHOICES[name])}, " if name in _CHOICES else ""
        help = f"{_FIELD_HELP[name]} ({shown}default: the preset's; small-T {default})".replace("%", "%%")
        group.add_argument(f"--{name}", type=parse_bool if kind is bool else kind, default=None,
                           metavar=kind.__name__.upper(), choices=_CHOICES.get(name), help=help)


def config_overrides(args: argparse.Namespace) -> dict:
    """The config fields the user set explicitly on the command line."""
    return {name: getattr(args, name) for name in _FIELDS if getattr(args, name, None) is not None}


def config_from_args(args: argparse.Namespace) -> LMConfig:
    """The config that --preset and the field flags describe; a MiniMindError naming the flags if they disagree."""
    overrides = config_overrides(args)
    try:
        return LMConfig.from_preset(args.preset, **overrides)
    except (MiniMindError, ValueError) as error:
        flags = " ".join([f"--preset {args.preset}"] + [f"--{name} {value}" for name, value in overrides.items()])
        raise MiniMindError(f"model config {flags}: {error}") from None


def check_field_types(fields: dict, source) -> None:
    """Raise a MiniMindError naming `source` (a config file) and the field when a known config field has
    the wrong type ("dim": "abc") or a float is not finite. Unknown fields are left to the config."""
    nullable = ("hidden_dim", "rope_scaling_type")
    for name, kind in _FIELDS.items():
        if name not in fields or (fields[name] is None and name in nullable):
            continue
        value = fields[name]
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else:
            ok = isinstance(value, str)
        if not ok:
            want = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}[kind]
            raise MiniMindError(f"{source}: '{name}' must be {want}, found {reprlib.repr(value)}")
