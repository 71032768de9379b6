"""The one LMConfig -> transformers config builder: the LlamaConfig (dense) or Qwen2MoeConfig (MoE) of a
native model computing what MiniMind computes. export_model.py --format native builds its models from
it, and bench.py its reference models.

The MoE mapping (why renormalisation only applies with more than one expert per token, how shared
experts become Qwen2-MoE's one gated shared expert) is explained in export_model.py.
"""
import math


def rope_parameters(cfg) -> tuple[dict, int]:
    """transformers' rope_parameters equivalent to our RoPE settings, and the context they cover."""
    theta, kind, factor = cfg.rope_theta, cfg.rope_scaling_type, cfg.rope_factor
    if kind is None:
        return {"rope_type": "default", "rope_theta": theta}, cfg.max_seq_len
    context = int(cfg.max_seq_len * factor)
    if kind == "linear":
        return {"rope_type": "linear", "rope_theta": theta, "factor": factor}, context
    if kind == "ntk":  # static NTK: only the base changes
        return {"rope_type": "default", "rope_theta": theta * factor ** (cfg.head_dim / (cfg.head_dim - 2))}, context
    return {"rope_type": "yarn", "rope_theta": theta, "factor": factor, "beta_fast": 32.0, "beta_slow": 1.0,
            "original_max_position_embeddings": cfg.max_seq_len,
            "attention_factor": 0.1 * math.log(factor) + 1.0}, context


def native_config(cfg):
    """transformers' LlamaConfig (dense) or Qwen2MoeConfig (MoE) of the same shape, RoPE and routing as `cfg`."""
    from transformers import LlamaConfig, Qwen2MoeConfig

    rope, context = rope_parameters(cfg)
    shared = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads, hidden_act="silu",
        max_position_embeddings=context, rms_norm_eps=cfg.norm_eps, rope_parameters=rope,
        tie_word_embeddings=True, attention_dropout=0.0, bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id, intermediate_size=cfg.hidden_dim,
    )
    if not cfg.use_moe:
        return LlamaConfig(**shared, head_dim=cfg.head_dim, attention_bias=False, mlp_bias=False)
    return Qwen2MoeConfig(
        **shared, moe_intermediate_size=cfg.hidden_dim,
        shared_expert_intermediate_size=cfg.hidden_dim * cfg.n_shared_experts, num_experts=cfg.n_routed_experts,
        num_experts_per_tok=cfg.num_experts_per_tok, norm_topk_prob=cfg.norm_topk_prob and cfg.num_experts_per_tok > 1,
        decoder_sparse_step=1, mlp_only_layers=[], qkv_bias=False, use_sliding_window=False,
        router_aux_loss_coef=cfg.aux_loss_alpha,
    )
