"""One short GPU benchmark: JAX/Equinox (sgdreg.zoo) against plain PyTorch, same process.

    bash benchmarks/gpu.sh              # GPU (H200): ResNet-18 k=64, batch 128, N=5000, 32 probes
    bash benchmarks/gpu.sh --small      # CPU-sized smoke run (k=4, batch 16, N=64, 4 probes, R=8)

Parts (each wrapped: a failure prints its traceback and the next part runs):
  (a) backend: jax.devices(), default backend; with --expect-gpu (default unless --small) exit 2
      when JAX has no GPU.
  (b) ResNet-18 (Nakkiran et al. width k, pre-activation) SGD training steps/s, CIFAR-shaped
      synthetic batch, softmax cross-entropy, BN in train mode, plain SGD lr 0.1: JAX (one jitted
      step, donated buffers, AOT-compiled, warmup excluded, block_until_ready) vs an eager PyTorch
      loop on a hand-written equivalent network holding the SAME weights.
  (c) Hutchinson trace of the Hessian of the mean loss over N examples (Rademacher probes, chunks
      of --chunk examples, BN in inference mode) on the same weights: JAX forward-over-reverse HVP,
      probes via lax.map, chunks via lax.scan vs PyHessian's ``trace()`` algorithm written inline
      (per chunk: loss, autograd.grad(create_graph=True), autograd.grad(grads, grad_outputs=v),
      THv += Hv * n_chunk; v.THv / N). Both use the SAME NumPy-drawn probes (drawn and uploaded
      outside the timings), so their v.Hv values are compared probe by probe (sanity check).
      Each side stops adding probes once its budget is spent; seconds/probe are compared.
  (d) R independent small-MLP full-batch GD runs (own init, own lr): one jit(vmap(run)) vs the
      same jitted single run called R times.
  (e) peak device memory after (b) and (c) (JAX memory_stats()['peak_bytes_in_use'], which is a
      process-lifetime peak, and torch.cuda.max_memory_allocated() per part).

Precision: by default TF32 is OFF in both frameworks (NVIDIA_TF32_OVERRIDE=0,
jax_default_matmul_precision="highest", torch allow_tf32=False, matmul precision "highest");
--tf32 turns it ON in both (JAX "tensorfloat32", torch allow_tf32=True / "high"). float32
everywhere; torch.backends.cudnn.benchmark=True (XLA autotunes its convolutions too).
``--out FILE`` writes every number as JSON (rewritten after each part).

Time on one H200 (estimate, not yet measured): ~3-4 min. Parts run in the order a, b, d, c; (c)
shrinks its timing budget to stay inside --deadline-s (default 240 s, soft: a running compile or
probe is not interrupted), and a part is skipped once the deadline has passed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
T_START = time.perf_counter()


# --------------------------------------------------------------------------- arguments


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="CPU-sized smoke run")
    p.add_argument("--out", default=None, help="write all numbers to this JSON file")
    p.add_argument("--expect-gpu", action=argparse.BooleanOptionalAction, default=None,
                   help="exit 2 if JAX has no GPU (default: on unless --small)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 in both frameworks")
    p.add_argument("--parts", default="abcde", help="subset of parts to run, e.g. 'abd'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deadline-s", type=float, default=None,
                   help="soft wall-clock budget for the whole script (default 240; 600 --small)")
    # (b)
    p.add_argument("--k", type=int, default=None, help="ResNet-18 width (64 / 4 small)")
    p.add_argument("--batch", type=int, default=None, help="training batch (128 / 16 small)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (20 / 3 small)")
    p.add_argument("--warmup", type=int, default=3, help="untimed training steps")
    # (c)
    p.add_argument("--n-hess", type=int, default=None, help="examples (5000 / 64 small)")
    p.add_argument("--chunk", type=int, default=None, help="examples per HVP chunk (500 / 16 small)")
    p.add_argument("--probes", type=int, default=None, help="Rademacher probes (32 / 4 small)")
    p.add_argument("--probes-per-call", type=int, default=None,
                   help="probes per compiled JAX call (4 / 2 small)")
    p.add_argument("--hess-budget-s", type=float, default=None,
                   help="max timed seconds per framework in (c) (40 / 60 small)")
    # (d)
    p.add_argument("--runs", type=int, default=None, help="R runs in the sweep (64 / 8 small)")
    p.add_argument("--sweep-steps", type=int, default=None, help="GD steps per run (200 / 50)")
    p.add_argument("--sweep-n", type=int, default=None, help="examples (1000 / 200 small)")
    p.add_argument("--sweep-width", type=int, default=64)
    a = p.parse_args(argv)
    defaults = {
        "k": (64, 4), "batch": (128, 16), "steps": (20, 3), "n_hess": (5000, 64),
        "chunk": (500, 16), "probes": (32, 4), "probes_per_call": (4, 2),
        "hess_budget_s": (40.0, 60.0), "runs": (64, 8), "sweep_steps": (200, 50),
        "sweep_n": (1000, 200), "deadline_s": (240.0, 600.0),
    }
    for name, (gpu_default, small_default) in defaults.items():
        if getattr(a, name) is None:
            setattr(a, name, small_default if a.small else gpu_default)
    if a.expect_gpu is None:
        a.expect_gpu = not a.small
    if a.n_hess % a.chunk:
        p.error("--n-hess must be a multiple of --chunk")
    return a


# --------------------------------------------------------------------------- helpers


def elapsed() -> float:
    return time.perf_counter() - T_START


def say(msg: str) -> None:
    print(f"[{elapsed():7.1f}s] {msg}", flush=True)


def load_zoo():
    """sgdreg.zoo loaded from its file, so the rest of the sgdreg package (and its heavier
    dependencies) is not imported."""
    path = ROOT / "src" / "sgdreg" / "zoo.py"
    spec = importlib.util.spec_from_file_location("sgdreg_zoo_standalone", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def numpy_init(make, seed: int):
    """``make()``'s pytree with NumPy-drawn weights (PyTorch-style U(+-1/sqrt(fan_in)) for conv
    and linear weights and biases; BatchNorm weight 1, bias 0, running mean 0, var 1, counter 0;
    any other float leaf 0). Avoids compiling one XLA RNG op per weight shape."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(seed)
    shapes = eqx.filter_eval_shape(make)
    f32 = jnp.float32

    def uniform(shape, fan_in):
        lim = 1.0 / math.sqrt(fan_in)
        return jnp.asarray(rng.uniform(-lim, lim, size=shape), f32)

    def fill(node):
        if isinstance(node, (eqx.nn.Conv, eqx.nn.Linear)):
            fan_in = int(np.prod(node.weight.shape[1:]))
            node = eqx.tree_at(lambda m: m.weight, node, uniform(node.weight.shape, fan_in))
            if node.bias is not None:
                node = eqx.tree_at(lambda m: m.bias, node, uniform(node.bias.shape, fan_in))
            return node
        if isinstance(node, eqx.nn.BatchNorm):
            n = node.input_size
            if node.weight is not None:
                node = eqx.tree_at(lambda m: (m.weight, m.bias), node,
                                   (jnp.ones(n, f32), jnp.zeros(n, f32)))
            for name in ("batch_counter", "ema_first_time_index"):
                if getattr(node, name, None) is not None:
                    init = np.zeros((), np.int32) if name == "batch_counter" else np.array(True)
                    node = eqx.tree_at(lambda m, nm=name: getattr(m, nm), node,
                                       eqx.nn.StateIndex(jnp.asarray(init)))
            for name in ("batch_state_index", "ema_state_index"):
                if getattr(node, name, None) is not None:
                    node = eqx.tree_at(lambda m, nm=name: getattr(m, nm), node,
                                       eqx.nn.StateIndex((jnp.zeros(n, f32), jnp.ones(n, f32))))
            return node
        return node

    is_node = lambda x: isinstance(x, (eqx.nn.Conv, eqx.nn.Linear, eqx.nn.BatchNorm))
    model = jax.tree_util.tree_map(fill, shapes, is_leaf=is_node)
    return jax.tree_util.tree_map(
        lambda s: jnp.zeros(s.shape, s.dtype) if isinstance(s, jax.ShapeDtypeStruct) else s, model
    )


def xent(logits, y):
    import jax
    import jax.numpy as jnp

    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def batched(model):
    import jax

    return jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))


def jax_mem():
    import jax

    try:
        stats = jax.devices()[0].memory_stats()
    except Exception as e:  # noqa: BLE001
        return {"error": repr(e)}
    if not stats:
        return None
    return {k: stats.get(k) for k in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit")}


def gib(n):
    return None if n is None else round(n / 2**30, 3)


# ----------------------------------------------------------------- PyTorch ResNet-18


def torch_resnet18_class():
    """Hand-written PyTorch twin of ``zoo.ResNet18`` (parameters registered in the same order
    as the Equinox leaves, so weights copy over by position)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def conv(cin, cout, k, stride=1, padding=0):
        return nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False)

    class PreActBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(cin)
            self.conv1 = conv(cin, cout, 3, stride, 1)
            self.bn2 = nn.BatchNorm2d(cout)
            self.conv2 = conv(cout, cout, 3, 1, 1)
            self.shortcut = conv(cin, cout, 1, stride) if stride != 1 or cin != cout else None

        def forward(self, x):
            out = F.relu(self.bn1(x))
            sc = x if self.shortcut is None else self.shortcut(out)
            out = self.conv1(out)
            out = self.conv2(F.relu(self.bn2(out)))
            return out + sc

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = conv(cin, cout, 3, stride, 1)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = conv(cout, cout, 3, 1, 1)
            self.bn2 = nn.BatchNorm2d(cout)
            if stride != 1 or cin != cout:
                self.shortcut = conv(cin, cout, 1, stride)
                self.shortcut_bn = nn.BatchNorm2d(cout)
            else:
                self.shortcut = self.shortcut_bn = None

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            sc = x if self.shortcut is None else self.shortcut_bn(self.shortcut(x))
            return F.relu(out + sc)

    class TorchResNet18(nn.Module):
        def __init__(self, num_classes=10, k=64, in_channels=3, preact=True):
            super().__init__()
            self.stem = conv(in_channels, k, 3, 1, 1)
            self.stem_bn = None if preact else nn.BatchNorm2d(k)
            block = PreActBlock if preact else BasicBlock
            blocks, cin = [], k
            for width, stride in zip((k, 2 * k, 4 * k, 8 * k), (1, 2, 2, 2)):
                for s in (stride, 1):
                    blocks.append(block(cin, width, s))
                    cin = width
            self.blocks = nn.ModuleList(blocks)
            self.linear = nn.Linear(cin, num_classes)

        def forward(self, x):
            out = self.stem(x)
            if self.stem_bn is not None:
                out = F.relu(self.stem_bn(out))
            for blk in self.blocks:
                out = blk(out)
            return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))

    return TorchResNet18


def torch_from_jax(jax_model, k, device):
    """A TorchResNet18 holding ``jax_model``'s parameters (BN running stats: torch defaults,
    mean 0 / var 1, equal to the fresh Equinox state)."""
    import equinox as eqx
    import jax
    import numpy as np
    import torch

    net = torch_resnet18_class()(k=k, preact=jax_model.preact)
    leaves = [np.asarray(a) for a in jax.tree_util.tree_leaves(eqx.filter(jax_model, eqx.is_inexact_array))]
    params = list(net.parameters())
    assert len(leaves) == len(params), (len(leaves), len(params))
    with torch.no_grad():
        for p, a in zip(params, leaves):
            assert tuple(p.shape) == a.shape, (tuple(p.shape), a.shape)
            p.copy_(torch.from_numpy(np.array(a, dtype=np.float32)))
    return net.to(device)


# --------------------------------------------------------------------------- parts


def part_backend(ctx):
    import jax

    devs = jax.devices()
    backend = jax.default_backend()
    say(f"JAX {jax.__version__}  devices={devs}  default_backend={backend}")
    out = {"jax_version": jax.__version__, "devices": [str(d) for d in devs], "default_backend": backend,
           "device_kind": devs[0].device_kind if devs else None}
    torch = ctx["torch"]
    if torch is not None:
        out["torch_version"] = torch.__version__
        out["torch_cuda"] = bool(torch.cuda.is_available())
        out["torch_device"] = str(ctx["tdev"])
        if torch.cuda.is_available():
            out["torch_gpu"] = torch.cuda.get_device_name(0)
        say(f"torch {torch.__version__}  device={ctx['tdev']}")
    else:
        out["torch_version"] = None
        say(f"torch not available ({ctx['torch_error']}): PyTorch comparisons will be skipped")
    if ctx["args"].expect_gpu and backend != "gpu":
        out["error"] = f"expected a GPU but JAX's default backend is {backend!r} (devices {devs})"
    return out


def _need_torch(ctx):
    torch = ctx["torch"]
    if torch is None:
        return f"skipped: torch not importable ({ctx['torch_error']})"
    if ctx["jax_backend"] == "gpu" and ctx["tdev"].type != "cuda":
        return "skipped: JAX is on GPU but torch has no CUDA (a CPU torch timing would be meaningless)"
    return None


def part_training(ctx):
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    args, zoo = ctx["args"], ctx["zoo"]
    out = {"k": args.k, "batch": args.batch, "timed_steps": args.steps, "warmup_steps": args.warmup,
           "lr": 0.1, "model": "zoo.ResNet18(preact=True)"}
    model, state = eqx.nn.make_with_state(
        lambda: numpy_init(lambda: zoo.ResNet18(k=args.k, key=jax.random.key(0)), args.seed))()
    ctx["resnet"] = (model, state)
    out["params"] = zoo.count_params(model)
    rng = np.random.default_rng(args.seed + 1)
    xb = rng.normal(size=(args.batch, 3, 32, 32)).astype(np.float32)
    yb = rng.integers(0, 10, size=args.batch).astype(np.int32)
    say(f"(b) ResNet-18 k={args.k}: {out['params']:,} params, batch {args.batch}")

    # ---- JAX
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt = optax.sgd(0.1)

    def step(params, state, opt_state, x, y):
        def loss_fn(p):
            logits, new_state = batched(eqx.combine(p, static))(x, state)
            return xent(logits, y), new_state

        (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_state, opt_state, loss

    x, y = jnp.asarray(xb), jnp.asarray(yb)
    p_, s_, o_ = jax.tree_util.tree_map(jnp.array, (params, state, opt.init(params)))  # own buffers
    t0 = time.perf_counter()
    step_c = jax.jit(step, donate_argnums=(0, 1, 2)).lower(p_, s_, o_, x, y).compile()
    out["jax_compile_s"] = time.perf_counter() - t0
    losses = []
    for _ in range(args.warmup):
        p_, s_, o_, loss = step_c(p_, s_, o_, x, y)
        losses.append(float(loss))
    jax.block_until_ready((p_, s_, o_))
    t0 = time.perf_counter()
    for _ in range(args.steps):
        p_, s_, o_, loss = step_c(p_, s_, o_, x, y)
    jax.block_until_ready((p_, s_, o_, loss))
    t_jax = (time.perf_counter() - t0) / args.steps
    out.update(jax_step_s=t_jax, jax_steps_per_s=1 / t_jax, jax_first_losses=losses,
               jax_final_loss=float(loss))
    say(f"(b) JAX   : {1 / t_jax:9.2f} steps/s ({t_jax * 1e3:.2f} ms/step; "
        f"compile {out['jax_compile_s']:.1f}s; losses {losses[0]:.4f} -> {float(loss):.4f})")
    del p_, s_, o_
    out["jax_memory_after"] = jax_mem()

    # ---- PyTorch
    skip = _need_torch(ctx)
    if skip:
        out["torch"] = skip
        say(f"(b) torch : {skip}")
        return out
    torch = ctx["torch"]
    dev = ctx["tdev"]
    net = torch_from_jax(model, args.k, dev).train()
    topt = torch.optim.SGD(net.parameters(), lr=0.1)
    tx, ty = torch.from_numpy(xb).to(dev), torch.from_numpy(yb).long().to(dev)
    F = torch.nn.functional
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def tstep():
        topt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(tx), ty)
        loss.backward()
        topt.step()
        return loss.detach()

    tlosses = [tstep().item() for _ in range(args.warmup)]
    ctx["sync"]()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = tstep()
    ctx["sync"]()
    t_torch = (time.perf_counter() - t0) / args.steps
    out.update(torch_step_s=t_torch, torch_steps_per_s=1 / t_torch, torch_first_losses=tlosses,
               torch_final_loss=float(loss), ratio_torch_over_jax=t_torch / t_jax,
               first_loss_abs_diff=abs(tlosses[0] - losses[0]))
    if dev.type == "cuda":
        out["torch_max_memory_allocated_gib"] = gib(torch.cuda.max_memory_allocated())
    say(f"(b) torch : {1 / t_torch:9.2f} steps/s ({t_torch * 1e3:.2f} ms/step; losses {tlosses[0]:.4f} ->"
        f" {float(loss):.4f}; |first loss - JAX| = {out['first_loss_abs_diff']:.2e})")
    say(f"(b) ratio torch_time/jax_time = {out['ratio_torch_over_jax']:.2f}")
    return out


def part_hessian(ctx):
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    args = ctx["args"]
    if "resnet" not in ctx:  # (b) skipped or failed before building it
        zoo = ctx["zoo"]
        ctx["resnet"] = eqx.nn.make_with_state(
            lambda: numpy_init(lambda: zoo.ResNet18(k=args.k, key=jax.random.key(0)), args.seed))()
    model, state = ctx["resnet"]
    n, chunk, n_chunks = args.n_hess, args.chunk, args.n_hess // args.chunk
    ppc = min(args.probes_per_call, args.probes)
    n_calls = math.ceil(args.probes / ppc)
    out = {"n_examples": n, "chunk": chunk, "probes_requested": args.probes, "probes_per_call": ppc,
           "bn": "inference mode (running stats)",
           "probes": "Rademacher, drawn with NumPy outside the timings, identical for both frameworks",
           "timing": "sum over calls of (call + block/sync); probe upload excluded"}
    rng = np.random.default_rng(args.seed + 2)
    xs = rng.normal(size=(n_chunks, chunk, 3, 32, 32)).astype(np.float32)
    ys = rng.integers(0, 10, size=(n_chunks, chunk)).astype(np.int32)
    say(f"(c) Hutchinson: N={n} in {n_chunks} chunks of {chunk}, {args.probes} probes")

    # ---- JAX
    inf_model = eqx.nn.inference_mode(model)
    params, static = eqx.partition(inf_model, eqx.is_inexact_array)
    p_leaves, p_def = jax.tree_util.tree_flatten(params)
    shapes = [a.shape for a in p_leaves]

    def probe(i):
        """Probe i (same for both frameworks): list of float32 +-1 arrays shaped like params."""
        r = np.random.default_rng([args.seed, 7, i])
        return [(r.integers(0, 2, size=sh, dtype=np.int8) * 2 - 1).astype(np.float32) for sh in shapes]

    def chunk_loss(p, xb, yb):
        logits, _ = batched(eqx.combine(p, static))(xb, state)
        return xent(logits, yb)

    def hvp(p, v, xb, yb):  # forward-over-reverse
        return jax.jvp(lambda q: jax.grad(chunk_loss)(q, xb, yb), (p,), (v,))[1]

    def tree_vdot(a, b):
        return sum(jnp.vdot(u, w) for u, w in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))

    def probes_vhv(p, X, Y, V):  # V: params-shaped pytree with a leading probe axis
        def one(v):
            def body(acc, xy):  # sum over chunks of v.H_chunk v (equal chunk sizes)
                return acc + tree_vdot(v, hvp(p, v, *xy)), None

            acc, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (X, Y))
            return acc / X.shape[0]

        return jax.lax.map(one, V)

    def stacked(i0):
        ps = [probe(i) for i in range(i0, i0 + ppc)]
        return jax.tree_util.tree_unflatten(p_def, [jnp.asarray(np.stack(z)) for z in zip(*ps)])

    X, Y = jnp.asarray(xs), jnp.asarray(ys)
    V = stacked(0)
    t0 = time.perf_counter()
    f = jax.jit(probes_vhv).lower(params, X, Y, V).compile()
    out["jax_compile_s"] = time.perf_counter() - t0
    budget = min(args.hess_budget_s, max(ctx["deadline"] - elapsed(), 10.0) / 2)
    out["jax_budget_s"] = budget
    say(f"(c) JAX compiled in {out['jax_compile_s']:.1f}s; timing budget {budget:.0f}s")
    vals, t_jax = [], 0.0
    for c in range(n_calls):
        if c:
            V = stacked(c * ppc)
        jax.block_until_ready(V)
        t0 = time.perf_counter()
        res = np.asarray(f(params, X, Y, V))
        t_jax += time.perf_counter() - t0
        vals.extend(res.tolist())
        if t_jax > budget:
            break
    del V, f
    vals = vals[:args.probes]
    out.update(jax_probes=len(vals), jax_s=t_jax, jax_s_per_probe=t_jax / len(vals), jax_vHv=vals,
               jax_trace=float(np.mean(vals)), jax_memory_after=jax_mem())
    say(f"(c) JAX   : {len(vals)} probes in {t_jax:.2f}s ({t_jax / len(vals):.3f} s/probe), "
        f"trace ~ {out['jax_trace']:.5g}")

    # ---- PyTorch, PyHessian's trace() algorithm
    skip = _need_torch(ctx)
    if skip:
        out["torch"] = skip
        say(f"(c) torch : {skip}")
        return out
    torch = ctx["torch"]
    dev = ctx["tdev"]
    F = torch.nn.functional
    net = torch_from_jax(model, args.k, dev).eval()
    tparams = [p for p in net.parameters() if p.requires_grad]
    assert [tuple(p.shape) for p in tparams] == [tuple(sh) for sh in shapes]
    txs = [torch.from_numpy(xs[i]).to(dev) for i in range(n_chunks)]
    tys = [torch.from_numpy(ys[i]).long().to(dev) for i in range(n_chunks)]
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def dataloader_hv_product(v):  # pyhessian.hessian.dataloader_hv_product + group_product
        thv = [torch.zeros_like(p) for p in tparams]
        num = 0
        for xb, yb in zip(txs, tys):
            net.zero_grad()
            loss = F.cross_entropy(net(xb), yb)
            grads = torch.autograd.grad(loss, tparams, create_graph=True)
            hv = torch.autograd.grad(grads, tparams, grad_outputs=v, only_inputs=True, retain_graph=False)
            thv = [t + h * float(xb.shape[0]) + 0.0 for t, h in zip(thv, hv)]
            num += xb.shape[0]
        thv = [t / float(num) for t in thv]
        return sum(torch.sum(t * w) for t, w in zip(thv, v)).cpu().item()

    # warm-up (cuDNN autotuning) on one chunk, untimed
    net.zero_grad()
    g = torch.autograd.grad(F.cross_entropy(net(txs[0]), tys[0]), tparams, create_graph=True)
    torch.autograd.grad(g, tparams, grad_outputs=[torch.ones_like(p) for p in tparams])
    del g
    ctx["sync"]()
    budget = min(args.hess_budget_s, max(ctx["deadline"] - elapsed(), 10.0))
    out["torch_budget_s"] = budget
    tvals, t_torch = [], 0.0
    for i in range(args.probes):
        v = [torch.from_numpy(a).to(dev) for a in probe(i)]
        ctx["sync"]()
        t0 = time.perf_counter()
        tvals.append(dataloader_hv_product(v))  # .item() synchronises
        t_torch += time.perf_counter() - t0
        if t_torch > budget:
            break
    m = min(len(vals), len(tvals))
    rel = [abs(a - b) / max(abs(a), 1e-30) for a, b in zip(vals[:m], tvals[:m])]
    out.update(torch_probes=len(tvals), torch_s=t_torch, torch_s_per_probe=t_torch / len(tvals),
               torch_vHv=tvals, torch_trace=float(np.mean(tvals)),
               same_probe_max_rel_diff=max(rel),
               ratio_torch_over_jax_per_probe=(t_torch / len(tvals)) / (t_jax / len(vals)))
    if dev.type == "cuda":
        out["torch_max_memory_allocated_gib"] = gib(torch.cuda.max_memory_allocated())
    say(f"(c) torch : {len(tvals)} probes in {t_torch:.2f}s ({t_torch / len(tvals):.3f} s/probe), "
        f"trace ~ {out['torch_trace']:.5g}")
    say(f"(c) same probes -> v.Hv agree to max rel diff {max(rel):.1e} over {m} probes")
    say(f"(c) ratio torch_time/jax_time per probe = {out['ratio_torch_over_jax_per_probe']:.2f}"
        f"  (all {args.probes} probes: jax ~{out['jax_s_per_probe'] * args.probes:.1f}s, "
        f"torch ~{out['torch_s_per_probe'] * args.probes:.1f}s)")
    return out


def part_sweep(ctx):
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    args = ctx["args"]
    R, steps, n, width, d = args.runs, args.sweep_steps, args.sweep_n, args.sweep_width, 16
    out = {"runs": R, "steps": steps, "n_examples": n, "width": width, "depth": 2, "in_dim": d,
           "loss": "mse, full-batch GD"}
    rng = np.random.default_rng(args.seed + 5)
    X = jnp.asarray(rng.normal(size=(n, d)).astype(np.float32))
    Y = jnp.asarray(np.sin(rng.normal(size=(n, d)) @ rng.normal(size=(d,)) / 4).astype(np.float32))

    def run(key, lr):
        model = eqx.nn.MLP(d, "scalar", width, 2, key=key)
        params, static = eqx.partition(model, eqx.is_inexact_array)

        def loss(p):
            return jnp.mean((jax.vmap(eqx.combine(p, static))(X) - Y) ** 2)

        def body(p, _):
            val, g = jax.value_and_grad(loss)(p)
            return jax.tree_util.tree_map(lambda a, b: a - lr * b, p, g), val

        p, losses = jax.lax.scan(body, params, None, length=steps)
        return losses[0], loss(p)

    keys = jax.random.split(jax.random.key(args.seed + 6), R)
    lrs = jnp.asarray(np.geomspace(0.01, 0.2, R).astype(np.float32))
    say(f"(d) sweep: R={R} MLP runs ({d}-{width}-{width}-1), {n} examples, {steps} GD steps each")
    single = jax.jit(run)
    vmapped = jax.jit(jax.vmap(run))
    t0 = time.perf_counter()
    jax.block_until_ready(single(keys[0], lrs[0]))
    out["single_compile_and_first_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(vmapped(keys, lrs))
    out["vmapped_compile_and_first_s"] = time.perf_counter() - t0
    key_list = list(keys)  # index on the host once: not part of the timing
    lr_list = list(lrs)

    def sequential():
        res = [single(kk, lr) for kk, lr in zip(key_list, lr_list)]
        jax.block_until_ready(res)
        return np.array([float(r[1]) for r in res])

    def vm():
        res = vmapped(keys, lrs)
        jax.block_until_ready(res)
        return np.asarray(res[1])

    t_seq, t_vm = [], []
    for _ in range(2):
        t0 = time.perf_counter()
        seq_final = sequential()
        t_seq.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        vm_final = vm()
        t_vm.append(time.perf_counter() - t0)
    out.update(sequential_s=min(t_seq), vmapped_s=min(t_vm),
               ratio_sequential_over_vmapped=min(t_seq) / min(t_vm),
               max_abs_final_loss_diff=float(np.max(np.abs(seq_final - vm_final))),
               final_loss_range=[float(vm_final.min()), float(vm_final.max())])
    say(f"(d) sequential {out['sequential_s']:.3f}s, vmapped {out['vmapped_s']:.3f}s -> ratio "
        f"sequential/vmapped = {out['ratio_sequential_over_vmapped']:.1f} (final losses agree to "
        f"{out['max_abs_final_loss_diff']:.1e})")
    return out


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.tf32:
        os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")  # cuBLAS/cuDNN, both frameworks
    # leave GPU memory for PyTorch in the same process (JAX preallocates 75% by default)
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.6")

    import jax

    precision = "tensorfloat32" if args.tf32 else "highest"
    try:
        jax.config.update("jax_default_matmul_precision", precision)
    except Exception as e:  # noqa: BLE001
        say(f"WARNING: could not set jax_default_matmul_precision={precision!r}: {e!r}")
        precision = f"unset ({e!r})"
    results = {"argv": sys.argv[1:], "settings": vars(args).copy(), "python": platform.python_version(),
               "tf32": args.tf32, "precision": {
                   "jax_default_matmul_precision": precision,
                   "NVIDIA_TF32_OVERRIDE": os.environ.get("NVIDIA_TF32_OVERRIDE"),
                   "XLA_PYTHON_CLIENT_MEM_FRACTION": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")}}
    ctx = {"args": args, "deadline": args.deadline_s, "jax_backend": jax.default_backend()}
    try:
        import torch

        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.set_float32_matmul_precision("high" if args.tf32 else "highest")
        torch.backends.cudnn.benchmark = True
        ctx["torch"], ctx["torch_error"] = torch, None
        ctx["tdev"] = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        ctx["sync"] = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        results["precision"].update(torch_cudnn_allow_tf32=args.tf32, torch_matmul_allow_tf32=args.tf32,
                                    torch_cudnn_benchmark=True)
    except Exception as e:  # noqa: BLE001
        ctx["torch"], ctx["torch_error"], ctx["tdev"] = None, repr(e), None

    def write():
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(results, indent=1, default=str))

    def attempt(name, fn):
        try:
            results[name] = fn(ctx)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            say(f"{name}: FAILED: {e!r}")
            results[name] = {"error": repr(e), "traceback": traceback.format_exc()}
        write()

    attempt("a_backend", part_backend)
    if "error" in results["a_backend"]:
        say("ERROR: " + results["a_backend"]["error"] + " (pass --no-expect-gpu to run anyway)")
        write()
        return 2
    try:
        ctx["zoo"] = load_zoo()
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        results["zoo_error"] = repr(e)
    parts = [("b", "b_training", part_training), ("d", "d_sweep", part_sweep),
             ("c", "c_hessian", part_hessian)]
    for letter, name, fn in parts:  # (d) before (c): cheap results first, (c) is the long one
        if letter not in args.parts:
            continue
        if elapsed() > args.deadline_s:
            say(f"{name}: skipped, past the {args.deadline_s:.0f}s deadline")
            results[name] = {"error": "skipped: deadline"}
            continue
        attempt(name, fn)
        if "e" in args.parts and letter in "bc":
            mem = jax_mem()
            results.setdefault("e_memory", {})[f"after_{letter}"] = mem
            if mem and "peak_bytes_in_use" in mem:
                say(f"(e) JAX peak device memory after ({letter}): {gib(mem['peak_bytes_in_use'])} GiB "
                    f"(in use {gib(mem['bytes_in_use'])} GiB)")
            else:
                say(f"(e) JAX memory_stats() after ({letter}): {mem}")
            write()

    results["total_s"] = elapsed()
    def get(part, key):
        return (results.get(part) or {}).get(key)

    mem = results.get("e_memory") or {}
    summary = {
        "backend": get("a_backend", "default_backend"),
        "train_steps_per_s_jax": get("b_training", "jax_steps_per_s"),
        "train_steps_per_s_torch": get("b_training", "torch_steps_per_s"),
        "train_ratio_torch_over_jax": get("b_training", "ratio_torch_over_jax"),
        "hutchinson_s_per_probe_jax": get("c_hessian", "jax_s_per_probe"),
        "hutchinson_s_per_probe_torch": get("c_hessian", "torch_s_per_probe"),
        "hutchinson_ratio_torch_over_jax": get("c_hessian", "ratio_torch_over_jax_per_probe"),
        "hutchinson_same_probe_max_rel_diff": get("c_hessian", "same_probe_max_rel_diff"),
        "sweep_ratio_sequential_over_vmapped": get("d_sweep", "ratio_sequential_over_vmapped"),
        "jax_peak_gib_after_b": gib((mem.get("after_b") or {}).get("peak_bytes_in_use")),
        "jax_peak_gib_after_c": gib((mem.get("after_c") or {}).get("peak_bytes_in_use")),
        "failed_parts": [k for k, v in results.items() if isinstance(v, dict) and "error" in v],
        "total_s": round(results["total_s"], 1),
    }
    results["summary"] = summary
    write()
    print("SUMMARY " + json.dumps(summary, default=str), flush=True)
    if args.out:
        say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
