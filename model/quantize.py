"""int8 weights for faster generation on a CPU.

    fast = quantize_int8(model)          # a copy; `model` itself is left as it was
    generate(fast, [prompt_ids], max_new_tokens=64)

At batch 1 a decode step reads every weight once to produce one token, so on a CPU its speed is set
by how many bytes of weights it reads. Dynamic int8 quantisation stores each nn.Linear's weight as
int8 with one scale per output row (a quarter of the fp32 bytes) and, at every call, quantises the
activations to int8 with a scale taken from that call's input; fbgemm then multiplies in int8 and
returns fp32. Everything else (embedding, norms, rotary, attention over the KV cache) stays fp32.

Outputs differ slightly from the fp32 model: 0.5-2% relative error in the logits of the quickstart's
trained tiny checkpoints, so greedy answers follow fp32's until two candidate tokens are nearly tied,
and may part there. Because the activation scale is taken over a whole call, a prompt read in one
call and the same tokens read one by one round slightly differently too.

Why torch.ao's `quantize_dynamic`, which torch deprecates: on an AVX2 CPU it is the one int8 path
that runs fast in eager mode. Measured on the 2-core development machine: a small-T decode step took
7.5 ms against 11.3 ms in fp32 (one thread), while `torch._weight_int8pack_mm` ran a 512 x 1408
matrix-vector product ~10x slower than fp32. torchao, the maintained successor, is not a dependency
and is not needed: its CPU speed relies on torch.compile, which does not pay back on this CPU (PERF.md).
The deprecation warnings are silenced for this one call only.

Run it on one thread (INT8_THREADS): a quantised decode step is ~60 small kernels, and with idle
OpenMP threads sleeping (OMP_WAIT_POLICY=PASSIVE, which the scripts set) waking a second thread for
each costs more than it saves. small-T, 32 + 256 tokens, quiet 2-core machine: 85 tok/s on one thread,
54 on two sleeping threads, 98 on two spinning ones (which a busy laptop cannot afford).
"""
import copy
import warnings

import torch
import torch.nn as nn
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

from .model import MoEFeedForward

INT8_THREADS = 1  # torch threads for generating with a quantised model (see above)


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` for CPU inference, in eval mode, with every nn.Linear (attention, FFN, MoE
    experts, lm_head) int8 dynamically quantised. The embedding stays fp32: the quantised lm_head
    holds its own int8 copy of the tied matrix, and the copy's embedding keeps the fp32 one.
    MoE routers stay fp32 too: they are tiny, and a rounding error there would swap whole experts."""
    devices = {p.device.type for p in model.parameters()}
    if devices != {"cpu"}:
        raise ValueError(f"quantize_int8 makes a CPU model (fbgemm kernels), but this model is on "
                         f"{', '.join(sorted(devices))}: move it with model.to('cpu') first")
    quantized = copy.deepcopy(model).float().eval()
    spec = {nn.Linear: per_channel_dynamic_qconfig}
    for name, module in quantized.named_modules():
        if isinstance(module, MoEFeedForward):
            spec[f"{name}.gate"] = None  # a name overrides the type: leave this Linear as it is
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel",
                                category=UserWarning)
        return quantize_dynamic(quantized, spec, dtype=torch.qint8, inplace=True)
