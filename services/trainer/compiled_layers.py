"""torch.compile for the elementwise work between a step's matmuls: each layer's RMS norms and MLP, and the loss.

With bf16 frozen weights on a CPU with AMX, matmuls are under half of an eager step; the rest is dozens of
small elementwise passes (RMSNorm's fp32 upcast, square, mean, rsqrt and scale; SiLU times the up
projection; the adapters' adds), each reading and writing whole activations and converting bf16 on the way.
Inductor fuses each module's passes into a few vectorised loops. Measured on a Xeon with AMX, 2 threads,
SmolLM2-135M, 8 examples a step packed (docs/architecture.md, training precision): eager 372 tokens/s,
norms compiled 424, MLPs compiled 421, both 512; whole decoder layers 498 (the packed attention's
per-example split is a graph break) after twice the compile time. fp32 ran slower compiled (236 vs 261
tokens/s), so the default compiles only bf16 CPU runs (`Hyperparameters.resolved_torch_compile`).

The loss (the kept logits upcast to fp32, log-softmax, the labels' negative log-likelihood, and backward)
is three passes over a (tokens, 49,152) tensor eager; compiled it is one each way: 30 vs 100 ms a
micro-batch of 340 label tokens (fwd + bwd, 2 threads), about 4% of a compiled bf16 step (torch.profiler).

`Module.compile` compiles in place: parameter names, checkpoints and the merged export are unchanged.
`dynamic=True` because packed rows differ in length at every step; one graph then serves them all instead of
a recompile for the first new length. Every layer shares one compiled graph (the weights are inputs).
"""

import torch

from services.trainer.batches import CrossEntropy, summed_cross_entropy

# Class-name suffixes of the modules compiled, as transformers names them across the Llama family
# (LlamaRMSNorm, Qwen2MLP, ...): the one place that says which modules are compiled.
COMPILED_MODULE_SUFFIXES = ("RMSNorm", "MLP")


def cpu_compiler_available() -> bool:
    """Inductor builds CPU kernels with a C++ compiler (g++, or $CXX); slim images have none."""
    from torch._inductor import cpp_builder, exc

    try:
        cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        return False
    return True


def compile_norms_and_mlps(model: torch.nn.Module) -> None:
    """Compiles every norm and MLP module of `model` in place."""
    for module in model.modules():
        if type(module).__name__.endswith(COMPILED_MODULE_SUFFIXES):
            module.compile(dynamic=True)


def compiled_cross_entropy() -> CrossEntropy:
    """`summed_cross_entropy` compiled; the number of label tokens changes every micro-batch, hence dynamic."""
    return torch.compile(summed_cross_entropy, dynamic=True)
