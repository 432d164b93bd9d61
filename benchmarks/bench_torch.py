"""sgdreg's SGD training step against an equivalent plain-PyTorch loop on CPU (not a test).

Same model (MLP 64-128-10, ReLU), data (digits, standardised, 1438 training examples), loss
(softmax cross-entropy), optimizer (SGD, h = 0.05), batch size 32, steps, and per-epoch
reshuffling, float32, all CPU threads for both. sgdreg: the engine's ``dynamics.advance`` (a
``fori_loop`` of ``STEPS`` steps, how every run advances a chunk; metrics excluded). PyTorch:
the usual Python loop (index the epoch permutation, forward, loss, backward, ``opt.step()``).
Both are warmed up first; each timing is the best of ``REPEATS``. Prints sgdreg ÷ torch
(goal ≤ 0.5).

    python benchmarks/bench_torch.py            # torch: pip install torch (CPU wheel)
"""

from __future__ import annotations

import sys
import time

STEPS = 2000
REPEATS = 3
BATCH = 32
LR = 0.05


def best_of(fn, repeats=REPEATS) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def sgdreg_timing(ds):
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from sgdreg import training
    from sgdreg.config import RunConfig

    cfg = RunConfig(optimizer="sgd", lr=LR, batch_size=BATCH, width=128, depth=1, steps=STEPS)
    s = training.build(cfg, ds)

    @eqx.filter_jit
    def run(state, problem, data):  # the engine's dynamics step loop, metrics excluded
        return problem.dynamics.advance(state, problem, data, jnp.asarray(0, jnp.int32),
                                        STEPS)[0]

    state0 = s.state0()

    def go():
        state = run(state0, s.problem, s.data)
        jax.block_until_ready(state.params)
        return state

    go()  # compile
    end = go()
    loss = s.problem.objective.example_loss(end.params, s.data.x_train[0], s.data.y_train[0])
    return best_of(go), float(loss)


def torch_timing(ds, threads: int):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.as_tensor(ds.x_train.reshape(ds.n_train, -1), dtype=torch.float32)
    y = torch.as_tensor(ds.y_train, dtype=torch.long)
    n, m = len(x), len(x) // BATCH
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)

    def go(steps=STEPS):
        loss = None
        for k in range(steps):
            if k % m == 0:
                perm = torch.randperm(n, generator=gen)
            idx = perm[(k % m) * BATCH:(k % m + 1) * BATCH]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        return loss.item()

    go(100)  # warm-up
    return best_of(go), go(1)


def main() -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        print("SKIP bench_torch: PyTorch is not installed (pip install torch, CPU wheel); it is "
              "not a dependency of sgdreg")
        return 0
    from sgdreg.datasets import open_dataset

    ds = open_dataset("digits")
    import torch

    t_sg, loss_sg = sgdreg_timing(ds)
    cores = torch.get_num_threads()
    torch_runs = {n: torch_timing(ds, n) for n in sorted({1, cores})}
    print(f"MLP 64-128-10 ReLU, digits n={ds.n_train}, SGD lr={LR}, batch {BATCH}, {STEPS} steps, "
          f"float32, CPU (torch {torch.__version__})")
    print(f"  sgdreg (engine dynamics.advance)   : {t_sg * 1e3:9.1f} ms  "
          f"({t_sg / STEPS * 1e6:7.1f} µs/step, loss of example 0 {loss_sg:.3f})")
    for n, (t, loss) in torch_runs.items():
        print(f"  PyTorch eager loop, {n} thread(s)    : {t * 1e3:9.1f} ms  "
              f"({t / STEPS * 1e6:7.1f} µs/step, last minibatch loss {loss:.3f})")
    t_pt = min(t for t, _ in torch_runs.values())
    ratio = t_sg / t_pt
    print(f"  sgdreg time / torch time (torch's best thread count) = {ratio:.3f}  "
          f"(goal ≤ 0.5: {'met' if ratio <= 0.5 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
