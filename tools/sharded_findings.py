"""Reproduce the sharded findings of torch.optim classes that have no optspec rule yet (Adafactor, Muon).

Runs each class on two 2-D float32 tensors for 5 steps over a gloo gang of 2 ranks (DTensor
Shard(0), Shard(1), FSDP2) and on one process, and prints the error each sharded run raised or
its largest difference from the one-process run. Usage: python tools/sharded_findings.py
"""

from __future__ import annotations

import numpy as np
import torch

from optspec.checking.targets import Group, Scenario
from optspec.checking.worker import TargetFailure
from optspec.impls import torch_gang


def one_process(name: str, kwargs: dict, params: tuple, grads: tuple, steps: int) -> list[np.ndarray]:
    tensors = [torch.tensor(p, dtype=torch.float32) for p in params]
    optimizer = getattr(torch.optim, name)(tensors, **kwargs)
    for t in range(steps):
        for p, g in zip(tensors, grads):
            p.grad = torch.tensor(g[t], dtype=torch.float32)
        optimizer.step()
    return [p.double().numpy() for p in tensors]


def main() -> None:
    rng = np.random.default_rng(0)
    shapes, steps = [(6, 4), (5, 3)], 5
    params = tuple(rng.standard_normal(s) for s in shapes)
    grads = tuple(rng.standard_normal((steps, *s)) for s in shapes)
    for name in ("Adafactor", "Muon"):
        kwargs = {"lr": 1e-2}
        expected = one_process(name, kwargs, params, grads, steps)
        for layout in ("dtensor.shard0", "dtensor.shard1", "fsdp2"):
            scenario = Scenario("torch", (Group((0, 1), kwargs, "lr", 1e-2),), params, grads, np.ones(steps), "float32", (steps,))
            try:
                got = torch_gang.gang(2).call(
                    "optspec.impls.torch_sharded:run_sharded", layout, f"torch.optim:{name}", None, scenario, timeout=120
                )
            except TargetFailure as exc:
                print(f"torch.optim.{name} {layout}@2: error: {exc.message}")
                continue
            worst = max(float(np.abs(got[steps][i]["theta"] - expected[i]).max()) for i in range(len(shapes)))
            print(f"torch.optim.{name} {layout}@2: max |sharded - one process| after {steps} steps = {worst:.3g}")
    torch_gang.close_all()


if __name__ == "__main__":
    main()
