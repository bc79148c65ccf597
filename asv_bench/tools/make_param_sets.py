"""Write ``benchmarks/param_sets.json``: the parameter lists the benchmarks step over.

The model lists are the parameter tensors of the reference implementations, in order,
written out from their architectures (no framework needed):

* ResNet-20 for CIFAR-10 (He et al. 2016, option A shortcuts): 269,722 parameters, 59 tensors;
* ResNet-50 as torchvision builds it: 25,557,032 parameters, 161 tensors;
* GPT-2 small (124M) as Hugging Face's GPT2LMHeadModel, tied embeddings: 124,439,808
  parameters, 148 tensors.

Flat sets are one tensor; ``many-small`` is 1024 tensors of 1024 elements (the launch and
Python overhead of bias and LayerNorm parameters). Run ``python asv_bench/tools/make_param_sets.py``
after changing this file; tests/test_asv_suite.py checks the totals.
"""

from __future__ import annotations

import json
from pathlib import Path

Shape = list[int]
OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "param_sets.json"


def _bn(prefix: str, channels: int) -> list[tuple[str, Shape]]:
    return [(f"{prefix}.weight", [channels]), (f"{prefix}.bias", [channels])]


def resnet20_cifar() -> list[tuple[str, Shape]]:
    out: list[tuple[str, Shape]] = [("conv1.weight", [16, 3, 3, 3]), *_bn("bn1", 16)]
    inplanes = 16
    for stage, planes in enumerate((16, 32, 64), 1):
        for block in range(3):
            p = f"layer{stage}.{block}"
            out += [(f"{p}.conv1.weight", [planes, inplanes, 3, 3]), *_bn(f"{p}.bn1", planes)]
            out += [(f"{p}.conv2.weight", [planes, planes, 3, 3]), *_bn(f"{p}.bn2", planes)]
            inplanes = planes
    return [*out, ("linear.weight", [10, 64]), ("linear.bias", [10])]


def resnet50() -> list[tuple[str, Shape]]:
    out: list[tuple[str, Shape]] = [("conv1.weight", [64, 3, 7, 7]), *_bn("bn1", 64)]
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), 1):
        for block in range(blocks):
            p = f"layer{stage}.{block}"
            out += [(f"{p}.conv1.weight", [planes, inplanes, 1, 1]), *_bn(f"{p}.bn1", planes)]
            out += [(f"{p}.conv2.weight", [planes, planes, 3, 3]), *_bn(f"{p}.bn2", planes)]
            out += [(f"{p}.conv3.weight", [planes * 4, planes, 1, 1]), *_bn(f"{p}.bn3", planes * 4)]
            if block == 0:
                out += [(f"{p}.downsample.0.weight", [planes * 4, inplanes, 1, 1]), *_bn(f"{p}.downsample.1", planes * 4)]
            inplanes = planes * 4
    return [*out, ("fc.weight", [1000, 2048]), ("fc.bias", [1000])]


def gpt2_small() -> list[tuple[str, Shape]]:
    d, vocab, context, layers = 768, 50257, 1024, 12
    out: list[tuple[str, Shape]] = [("transformer.wte.weight", [vocab, d]), ("transformer.wpe.weight", [context, d])]
    for layer in range(layers):
        p = f"transformer.h.{layer}"
        out += [(f"{p}.ln_1.weight", [d]), (f"{p}.ln_1.bias", [d])]
        out += [(f"{p}.attn.c_attn.weight", [d, 3 * d]), (f"{p}.attn.c_attn.bias", [3 * d])]
        out += [(f"{p}.attn.c_proj.weight", [d, d]), (f"{p}.attn.c_proj.bias", [d])]
        out += [(f"{p}.ln_2.weight", [d]), (f"{p}.ln_2.bias", [d])]
        out += [(f"{p}.mlp.c_fc.weight", [d, 4 * d]), (f"{p}.mlp.c_fc.bias", [4 * d])]
        out += [(f"{p}.mlp.c_proj.weight", [4 * d, d]), (f"{p}.mlp.c_proj.bias", [d])]
    return [*out, ("transformer.ln_f.weight", [d]), ("transformer.ln_f.bias", [d])]


def main() -> None:
    def named(tensors: list[tuple[str, Shape]]) -> list[dict[str, object]]:
        return [{"name": name, "shape": shape} for name, shape in tensors]

    sets = {
        "flat-1M": {"doc": "one tensor of 2^20 elements", "tensors": [{"shape": [1 << 20]}]},
        "flat-16M": {"doc": "one tensor of 2^24 elements", "tensors": [{"shape": [1 << 24]}]},
        "flat-64M": {"doc": "one tensor of 2^26 elements", "tensors": [{"shape": [1 << 26]}]},
        "many-small": {"doc": "1024 tensors of 1024 elements (2^20 in all)", "tensors": [{"shape": [1024], "count": 1024}]},
        "resnet20-cifar": {"doc": "ResNet-20 for CIFAR-10, option A shortcuts (269,722)", "tensors": named(resnet20_cifar())},
        "resnet50": {"doc": "torchvision ResNet-50 (25,557,032)", "tensors": named(resnet50())},
        "gpt2-124M": {"doc": "GPT-2 small, tied embeddings (124,439,808)", "tensors": named(gpt2_small())},
    }
    OUT.write_text(json.dumps(sets, indent=1) + "\n")


if __name__ == "__main__":
    main()
