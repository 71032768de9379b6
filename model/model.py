"""The MiniMind transformer: a decoder-only language model, Dense or Mixture-of-Experts.

Read top to bottom:
    RMSNorm            pre-norm, computed in fp32
    rope_*             rotary position embeddings (rotate-half, as in Llama), optional linear/NTK/YaRN scaling
    KVCache            explicit key/value cache, passed into forward and returned from it
    Attention          bias-free grouped-query attention through torch SDPA (or a plain fallback)
    FeedForward        SwiGLU
    MoEFeedForward     DeepSeek-style: shared experts + softmax-gated top-k routed experts + balance loss
    Block              attention + feed-forward, each with a residual around a pre-norm
    MiniMindModel      embeddings, blocks, final norm
    lm_loss            the language-model loss (next-token cross-entropy; IGNORE marks no target)
    MiniMindForCausalLM  the language-model head (tied to the embeddings), loss, transformers integration

Module names follow the transformers Llama layout, so a dense checkpoint maps 1:1 onto LlamaForCausalLM.
"""
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .LMConfig import LMConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # Normalise in fp32 even under bf16 autocast: the mean of squares loses precision in bf16.
        # The gain goes into the same fused kernel (one pass over x instead of two).
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


# ----------------------------------------------------------------------------- rotary embeddings

def rope_inverse_frequencies(config: LMConfig) -> tuple[torch.Tensor, float]:
    """Per-pair rotation speeds, and the attention scale that YaRN applies to cos/sin.

    Scaling stretches a model trained on `max_seq_len` positions to `rope_factor` times that:
      linear  divide every frequency by the factor (positions interpolated)
      ntk     raise the base so low frequencies stretch and high ones barely move
      yarn    blend interpolation (low frequencies) and extrapolation (high ones) per dimension,
              and sharpen attention by 0.1*ln(factor)+1 (Peng et al., 2023)
    """
    head_dim, theta = config.head_dim, config.rope_theta
    kind, factor = config.rope_scaling_type, config.rope_factor
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    if kind == "ntk":
        theta = theta * factor ** (head_dim / (head_dim - 2))
    inv_freq = 1.0 / theta ** exponents
    scale = 1.0
    if kind == "linear":
        inv_freq = inv_freq / factor
    elif kind == "yarn":
        beta_fast, beta_slow = 32.0, 1.0

        def dim_for_rotations(n_rotations):  # dimension whose wavelength fits n_rotations in the trained context
            return head_dim * math.log(config.max_seq_len / (n_rotations * 2 * math.pi)) / (2 * math.log(theta))

        low = max(math.floor(dim_for_rotations(beta_fast)), 0)
        high = min(math.ceil(dim_for_rotations(beta_slow)), head_dim - 1)
        ramp = ((torch.arange(head_dim // 2, dtype=torch.float64) - low) / max(high - low, 1e-3)).clamp(0, 1)
        inv_freq = inv_freq / factor * ramp + inv_freq * (1 - ramp)
        scale = 0.1 * math.log(factor) + 1.0
    return inv_freq.float(), scale


def rope_cos_sin(inv_freq: torch.Tensor, scale: float, positions: torch.Tensor):
    """cos/sin of shape (batch, 1, seq, head_dim) for integer positions of shape (batch, seq)."""
    angles = positions[..., None].float() * inv_freq  # (B, T, head_dim/2)
    angles = torch.cat([angles, angles], dim=-1)
    return (angles.cos() * scale)[:, None], (angles.sin() * scale)[:, None]


def apply_rope(x, cos, sin):
    """Rotate each (i, i + head_dim/2) pair of x by its angle (the rotate-half convention)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


# ----------------------------------------------------------------------------- KV cache

class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated and filled in place.

    Pass it to forward as `cache`; each call appends the new tokens' keys/values and
    attends over everything stored. It has the `update`/`get_seq_length` methods of transformers'
    Cache classes, so transformers' own DynamicCache works in the same place.
    """

    def __init__(self, capacity: int = 256):
        self.capacity = capacity
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.lengths: list[int] = []

    def update(self, key, value, layer_idx: int, *args, **kwargs):
        if layer_idx == len(self.keys):  # first call for this layer
            shape = (*key.shape[:2], max(self.capacity, key.shape[2]), key.shape[3])
            self.keys.append(key.new_empty(shape))
            self.values.append(value.new_empty(shape))
            self.lengths.append(0)
        start, end = self.lengths[layer_idx], self.lengths[layer_idx] + key.shape[2]
        if end > self.keys[layer_idx].shape[2]:  # grow geometrically, so appends stay amortised O(1)
            grow = max(end, 2 * self.keys[layer_idx].shape[2]) - self.keys[layer_idx].shape[2]
            pad = lambda t: F.pad(t, (0, 0, 0, grow))
            self.keys[layer_idx], self.values[layer_idx] = pad(self.keys[layer_idx]), pad(self.values[layer_idx])
        self.keys[layer_idx][:, :, start:end] = key
        self.values[layer_idx][:, :, start:end] = value
        self.lengths[layer_idx] = end
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.lengths[layer_idx] if layer_idx < len(self.lengths) else 0


class SharedPrompts:
    """A cache for training on rows that share their beginning: it holds the keys and values of P prompts
    and hands each to the G rows that follow it. Call the model twice with it: the P prompts (the first
    call fills it), then the P*G continuations, group by group (each row attends to its prompt, then to
    itself). The G replies GRPO samples for one problem share its prompt, and the rows of a tool-use SFT
    batch share the ~90-token system turn that offers the tools, about half of their tokens: run once
    instead of G times. Nothing is detached: the loss reaches the weights through the prompt's keys and
    values too, so the gradient is exactly that of G separate passes (tests/test_grpo.py checks it against
    trl's, tests/test_sft.py against the plain pass)."""

    def __init__(self, group_size: int):
        self.group_size = group_size
        self.keys, self.values = [], []

    def update(self, key, value, layer_idx: int, *args, **kwargs):
        if layer_idx == len(self.keys):  # the first pass: the prompts themselves
            self.keys.append(key)
            self.values.append(value)
            return key, value
        g = self.group_size  # the second: the replies, each row after its group's prompt
        return (torch.cat([self.keys[layer_idx].repeat_interleave(g, dim=0), key], dim=2),
                torch.cat([self.values[layer_idx].repeat_interleave(g, dim=0), value], dim=2))

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.keys[layer_idx].shape[2] if layer_idx < len(self.keys) else 0


# ----------------------------------------------------------------------------- attention

class Attention(nn.Module):
    def __init__(self, config: LMConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.q_proj = nn.Linear(config.dim, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.dim, bias=False)
        self.o_proj.residual_out = True  # scaled init, see MiniMindForCausalLM._init_weights
        self.dropout = config.dropout
        self.use_sdpa = config.flash_attn

    def forward(self, x, cos, sin, mask, cache: Optional[KVCache]):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        # Grouped-query attention: each key/value head serves n_heads / n_kv_heads query heads.
        repeats = self.n_heads // self.n_kv_heads
        dropout = self.dropout if self.training else 0.0
        # mask is None for plain causal attention over the whole input (the fast path), else a
        # boolean (B, 1, T, S) tensor, True where a query may look at a key.
        is_causal = mask is None and T > 1
        if self.use_sdpa:
            # enable_gqa shares each key/value head across its query heads inside the kernel, instead
            # of copying the keys and values n_heads/n_kv_heads times.
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal,
                                                 enable_gqa=repeats > 1)
        else:
            # Plain attention. The query heads that share a key/value head are stacked as extra rows
            # of one matmul, so keys and values are never copied.
            S = k.shape[2]
            grouped = q.reshape(B, self.n_kv_heads, repeats * T, self.head_dim)
            scores = (grouped @ k.transpose(-2, -1)).view(B, self.n_kv_heads, repeats, T, S) / math.sqrt(self.head_dim)
            if is_causal:
                mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)
            if mask is not None:
                scores = scores.masked_fill(~(mask[:, :, None] if mask.dim() == 4 else mask), float("-inf"))
            probs = F.dropout(scores.float().softmax(dim=-1).to(q.dtype), dropout, self.training)
            out = (probs.view(B, self.n_kv_heads, repeats * T, S) @ v).view(B, self.n_heads, T, self.head_dim)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


# ----------------------------------------------------------------------------- feed-forward

class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)
        self.down_proj.residual_out = True
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


class MoEFeedForward(nn.Module):
    """Shared experts that see every token, plus routed experts of which each token uses its top-k.

    The router scores experts with a softmax; a token's output is the sum of its top-k experts'
    outputs weighted by those scores (renormalised to sum to 1 when norm_topk_prob), plus the
    shared experts' outputs. The same code runs in training and inference.

    The balance loss (DeepSeek-MoE) is alpha * E * sum_e f_e * P_e, where f_e is the fraction of
    routing slots that went to expert e and P_e the mean router probability of e; it is smallest
    when load is uniform. With seq_aux it is computed per sequence and averaged.
    """

    def __init__(self, config: LMConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.n_experts = config.n_routed_experts
        self.norm_topk_prob = config.norm_topk_prob
        self.aux_loss_alpha = config.aux_loss_alpha
        self.seq_aux = config.seq_aux
        self.gate = nn.Linear(config.dim, config.n_routed_experts, bias=False)
        make_expert = lambda: FeedForward(config.dim, config.hidden_dim, config.dropout)
        self.experts = nn.ModuleList(make_expert() for _ in range(config.n_routed_experts))
        self.shared_experts = nn.ModuleList(make_expert() for _ in range(config.n_shared_experts))

    def route(self, x_flat):
        """Router probabilities (N, E), and each token's top-k expert ids and weights (N, k)."""
        probs = self.gate(x_flat).float().softmax(dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)
        if self.norm_topk_prob and self.top_k > 1:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return probs, experts, weights

    def balance_loss(self, probs, experts, batch: int):
        if self.aux_loss_alpha <= 0:
            return probs.new_zeros(())
        E = self.n_experts
        if self.seq_aux:
            probs, experts = probs.view(batch, -1, E), experts.view(batch, -1)
            slots = torch.zeros(batch, E, device=probs.device).scatter_add_(
                1, experts, torch.ones_like(experts, dtype=torch.float))
            load = slots / (experts.shape[1] / E)  # 1.0 per expert when perfectly balanced
            return self.aux_loss_alpha * (load * probs.mean(dim=1)).sum(dim=1).mean()
        fraction = F.one_hot(experts.view(-1), E).float().mean(dim=0)
        return self.aux_loss_alpha * E * (fraction * probs.mean(dim=0)).sum()

    def forward(self, x):
        B, T, D = x.shape
        x_flat = x.reshape(-1, D)
        probs, experts, weights = self.route(x_flat)
        # Sort the (token, slot) pairs by expert, so each expert runs once on a contiguous batch.
        flat_experts = experts.view(-1)
        order = flat_experts.argsort(stable=True)
        token_of_slot = order // self.top_k
        counts = torch.bincount(flat_experts, minlength=self.n_experts).tolist()
        out = torch.zeros_like(x_flat)
        for expert, slots, tokens in zip(self.experts, order.split(counts), token_of_slot.split(counts)):
            if len(tokens) == 0:
                # An idle expert still joins the graph with a zero contribution, so DDP sees a
                # gradient (of zeros) for every parameter in every step.
                out = out + 0.0 * sum(p.sum() for p in expert.parameters())
                continue
            y = expert(x_flat[tokens]) * weights.view(-1)[slots, None]
            out = out.index_add(0, tokens, y.to(out.dtype))
        for shared in self.shared_experts:
            out = out + shared(x_flat).to(out.dtype)
        return out.view(B, T, D), self.balance_loss(probs, experts, B)


# ----------------------------------------------------------------------------- the network

class Block(nn.Module):
    def __init__(self, config: LMConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = MoEFeedForward(config) if config.use_moe else FeedForward(config.dim, config.hidden_dim, config.dropout)

    def forward(self, x, cos, sin, mask, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        h = self.mlp(self.post_attention_layernorm(x))
        if isinstance(h, tuple):  # MoE returns its balance loss too
            h, aux_loss = h
        else:
            aux_loss = x.new_zeros((), dtype=torch.float)
        return x + h, aux_loss


def attention_mask_4d(attention_mask, q_len: int, kv_len: int, device=None):
    """Boolean (B, 1, q_len, kv_len) mask from a (B, kv_len) padding mask: causal and not padding.

    Returns None when plain causal attention is exact (no padding, queries cover all keys or a single
    new token), which lets SDPA take its fastest path.
    """
    if attention_mask is None or bool(attention_mask.all()):
        if q_len == kv_len or q_len == 1:
            return None
        attention_mask = None
    offset = kv_len - q_len
    causal = torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(offset)
    if attention_mask is None:
        return causal[None, None]
    mask = causal[None, None] & attention_mask[:, None, None, :].bool()
    # A query at a padding position may see no key at all; let it see everything rather than
    # produce NaNs (its output is never used).
    return mask | ~mask.any(dim=-1, keepdim=True)


class MiniMindModel(nn.Module):
    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        inv_freq, self.rope_scale = rope_inverse_frequencies(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def _apply(self, fn, recurse=True):
        # `.to(torch.bfloat16)` casts every floating buffer; RoPE frequencies rounded to bf16 would turn
        # positions into the wrong angles, so they are recomputed in fp32 on the new device.
        super()._apply(fn, recurse)
        self.inv_freq = rope_inverse_frequencies(self.config)[0].to(self.inv_freq.device)
        return self

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None):
        B, T = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            if attention_mask is not None and not bool(attention_mask.all()):
                # Left padding: a row's first real token is position 0.
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:past + T]
            else:
                position_ids = torch.arange(past, past + T, device=input_ids.device)[None].expand(B, T)
        cos, sin = rope_cos_sin(self.inv_freq, self.rope_scale, position_ids)
        mask = attention_mask_4d(attention_mask, T, past + T, input_ids.device)
        x = self.dropout(self.embed_tokens(input_ids))
        aux_loss = 0.0
        for layer in self.layers:
            x, layer_aux = layer(x, cos, sin, mask, cache)
            aux_loss = aux_loss + layer_aux
        return self.norm(x), aux_loss


# ----------------------------------------------------------------------------- the language-model loss

IGNORE = -100  # a target that counts nothing: cross_entropy's ignore_index (transformers uses the same value)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The language-model loss every stage trains and measures with: next-token cross-entropy, in float32,
    of `logits` (B, T, V) against aligned `targets` (B, T), where targets[:, i] is the token that should
    follow position i and IGNORE marks a position without a target. reduction "mean" (over the positions
    with a target), "sum", or "none" ((B, T), 0 where ignored)."""
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction=reduction)
    return loss.view(targets.shape) if reduction == "none" else loss


@dataclass
class MiniMindOutput(ModelOutput):
    """`loss` is the cross-entropy plus the MoE balance loss. The KV cache is `cache`, the name transformers
    5 generation reads; `past_key_values` is the same object under the name older callers read."""

    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    cache: Optional[KVCache] = None
    aux_loss: Optional[torch.Tensor] = None

    @property
    def past_key_values(self):
        return self.cache


class MiniMindForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = LMConfig
    base_model_prefix = "model"
    _no_split_modules = ["Block"]
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: LMConfig):
        super().__init__(config)
        self.model = MiniMindModel(config)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.lm_head.weight = self.model.embed_tokens.weight  # tied: one matrix reads and writes tokens
        self.post_init()

    def _init_weights(self, module):
        # GPT-2 style: N(0, 0.02), and the projections that write into the residual stream (tagged
        # `residual_out`) scaled by 1/sqrt(2 * n_layers) so the stream's variance does not grow with
        # depth. `init` skips weights that were loaded from a checkpoint.
        std = 0.02
        if isinstance(module, nn.Linear) and getattr(module, "residual_out", False):
            init.normal_(module.weight, mean=0.0, std=std / math.sqrt(2 * self.config.n_layers))
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, MiniMindModel):  # a buffer, so from_pretrained must rebuild it too
            init.copy_(module.inv_freq, rope_inverse_frequencies(self.config)[0])

    def tied_weight_names(self) -> set:
        return {"lm_head.weight"}

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.LongTensor] = None,
        cache: Optional[KVCache] = None,
        use_cache: bool = False,
        position_ids: Optional[torch.LongTensor] = None,
        shift_labels: Optional[torch.LongTensor] = None,
        logits_to_keep: int = 0,
        past_key_values: Optional[KVCache] = None,
        loss_only: bool = False,
        **kwargs,
    ) -> MiniMindOutput:
        """
        labels        HF convention: same positions as input_ids; the model predicts labels[:, 1:].
        shift_labels  already aligned targets: shift_labels[:, i] is the token after position i (the
                      project's own callers use this one; `labels` is for transformers and trl).
        Either way IGNORE (-100) marks positions without loss; the loss is lm_loss, plus the MoE balance
        loss. logits_to_keep > 0 computes logits only for the last positions (generation needs one).
        loss_only (with shift_labels) computes logits only where there is a target and returns none: the
        same loss without the vocabulary projection of the positions that count nothing, which in SFT are
        most of them (the projection is a third of this model's compute per token). With
        use_cache and no cache given, a new KVCache is created and returned. `past_key_values` is the name
        transformers 4 (and trl) pass the cache under; transformers 5 passes `cache`, as the project does.
        """
        cache = past_key_values if past_key_values is not None else cache
        if use_cache and cache is None:
            cache = KVCache()
        hidden, aux_loss = self.model(input_ids, attention_mask, position_ids, cache)
        if loss_only and shift_labels is not None:
            counted = shift_labels != IGNORE
            loss = lm_loss(self.lm_head(hidden[counted])[None], shift_labels[counted][None]) + aux_loss
            aux = aux_loss if torch.is_tensor(aux_loss) else hidden.new_zeros((), dtype=torch.float)
            return MiniMindOutput(loss=loss, logits=None, cache=cache, aux_loss=aux)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None and shift_labels is None:
            shift_labels = F.pad(labels[:, 1:], (0, 1), value=IGNORE)
        if shift_labels is not None:
            loss = lm_loss(logits, shift_labels) + aux_loss
        aux = aux_loss if torch.is_tensor(aux_loss) else logits.new_zeros((), dtype=torch.float)
        return MiniMindOutput(loss=loss, logits=logits, cache=cache, aux_loss=aux)


LMConfig.register_for_auto_class()
MiniMindForCausalLM.register_for_auto_class("AutoModelForCausalLM")
