"""Does one SimCLR training step compute the same thing at two commits? (issue 23, item 5: 858c187 vs e8c3da1)

    git worktree add --detach benches/.cmp/c858 858c187 && git worktree add --detach benches/.cmp/ce8c e8c3da1
    nice -n 15 python benches/simclr_step_compare.py            # all (make inputs, 4-6 child runs, compare)
    nice -n 15 python benches/simclr_step_compare.py compare    # only the comparison of saved results
    CMP_INPUT=smooth CMP_OUT=benches/.cmp/smooth nice -n 15 python benches/simclr_step_compare.py
    (env: CMP_WT folder holding the worktrees c858 and ce8c, default benches/.cmp; CMP_N per-view batch,
    default 256; CMP_STEPS, default 4; CMP_INPUT noise|smooth; CMP_OUT folder, default CMP_WT/noise)

Result (2026-12-07, docs/methods/simclr.md): identical up to fp32 rounding (gradients 1.7e-6 relative apart, the
same as the default CPU back end against FASTSSL_BACKEND=ref within one commit; the ref path is bitwise equal at
both commits); 4 steps at the peak learning rate grow that to 2-3% of the update, whichever pair is compared.

Each child runs with cwd = a worktree and PYTHONPATH = that worktree (so it imports that commit's
fastssl), builds the model exactly as `python -m fastssl.train --method simclr` does (parse_config ->
trainer._build_model (torch.manual_seed(seed) + build_method) -> convert_global_bn -> to_channels_last;
build_optimizer(cfg optimizer, scaled_lr(lr, batch), wd, momentum); torch.manual_seed(seed + 1)), then
feeds the SAME fixed batches (inputs.pt, bypassing the DALI loader) for STEPS LARS steps at the peak lr.
Saved per run: initial state_dict, optimizer groups, per-step loss/pos_cos, step-0 grads, params after
step 1 and after STEPS steps; plus the NT-Xent op alone on fixed z (loss + grad, default back end and ref).
Runs: 858c187 and e8c3da1, each with the default CPU back end and FASTSSL_BACKEND=ref; and a float64
version of the e8c3da1 step (the "truth" the fp32 rounding is measured against).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(os.environ.get("CMP_WT", Path(__file__).resolve().parent / ".cmp"))
OUT = Path(os.environ.get("CMP_OUT", HERE / "noise"))
INPUTS = OUT / "inputs.pt"
WT = {"858": HERE / "c858", "e8c": HERE / "ce8c"}
N = int(os.environ.get("CMP_N", 256))  # per-view batch (the default --batch-size 256, one process)
STEPS = int(os.environ.get("CMP_STEPS", 4))
SIZE = 64


def make_inputs():
    g = torch.Generator().manual_seed(1234)
    # views roughly like normalized images; a shared base + per-view noise so positives correlate
    batches = []
    for _ in range(STEPS):
        if os.environ.get("CMP_INPUT", "noise") == "smooth":
            # image-like: low-frequency content + per-image colour offset, so the pooled features vary
            # across images (i.i.d. pixel noise gives nearly identical pooled features: BN1d over them is
            # ill-conditioned and inflates fp32 rounding)
            low = torch.randn(N, 3, 8, 8, generator=g)
            base = torch.nn.functional.interpolate(low, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
            base = base + torch.randn(N, 3, 1, 1, generator=g)
            v1 = base + 0.2 * torch.randn(N, 3, SIZE, SIZE, generator=g)
            v2 = base + 0.2 * torch.randn(N, 3, SIZE, SIZE, generator=g)
        else:
            base = torch.randn(N, 3, SIZE, SIZE, generator=g)
            v1 = base + 0.5 * torch.randn(N, 3, SIZE, SIZE, generator=g)
            v2 = base + 0.5 * torch.randn(N, 3, SIZE, SIZE, generator=g)
        batches.append((v1, v2))
    z = torch.randn(2 * N, 128, generator=g)
    z[N:] = z[:N] + 0.7 * z[N:]  # correlated positives
    torch.save({"batches": batches, "z": z}, INPUTS)


# --------------------------------------------------------------------------------------------- child


def child(tag: str, out: str, dtype: str = "float32"):
    import fastssl
    from fastssl.models import to_channels_last
    from fastssl.ops import nt_xent, nt_xent_ref
    try:  # the layout before the house was reshaped into layers (3b12efb): 858c187, e8c3da1
        from fastssl.optim import build_optimizer, scaled_lr
        from fastssl.parallel import convert_global_bn
        from fastssl.train import parse_config
        from fastssl.trainer import _autocast, _build_model
    except ImportError:  # later commits: fastssl.engine / fastssl.cli
        from fastssl.cli.train import parse_config
        from fastssl.engine.optim import build_optimizer, scaled_lr
        from fastssl.engine.parallel import convert_global_bn
        from fastssl.engine.trainer import _autocast, _build_model
    dt = getattr(torch, dtype)
    res = {"fastssl_file": fastssl.__file__, "backend": os.environ.get("FASTSSL_BACKEND", "default")}
    cfg = parse_config(["--method", "simclr"])
    res["cfg"] = {k: v for k, v in cfg.items() if isinstance(v, (int, float, str, bool, tuple, list, type(None)))}
    dev = torch.device("cpu")
    method = to_channels_last(convert_global_bn(_build_model(cfg), dev).to(dev))
    method.train()
    res["init"] = {k: v.detach().clone() for k, v in method.state_dict().items()}
    if dt != torch.float32:
        method = method.to(dt)
    lr = scaled_lr(cfg["lr"], cfg["batch_size"])
    opt = build_optimizer(cfg["optimizer"], method, lr, cfg["weight_decay"], cfg["momentum"])
    names = {id(p): n for n, p in method.named_parameters()}
    res["opt_type"] = type(opt).__name__
    res["groups"] = [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[id(p)] for p in g["params"]]}
                     for g in opt.param_groups]
    autocast, _ = _autocast(cfg, dev)
    torch.manual_seed(cfg["seed"] + 1)  # as the trainer, after building (no random op in the step here)
    data = torch.load(INPUTS)
    labels = torch.zeros(N, dtype=torch.long)
    res["loss"], res["pos_cos"] = [], []
    for step, (v1, v2) in enumerate(data["batches"]):
        views = [v.to(dt).contiguous(memory_format=torch.channels_last) for v in (v1, v2)]
        with autocast:
            loss, metrics = method(views, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step == 0:
            res["grads"] = {n: p.grad.detach().clone() for n, p in method.named_parameters()}
        opt.step()
        res["loss"].append(float(loss))
        res["pos_cos"].append(float(metrics["pos_cos"]))
        if step == 0:
            res["params1"] = {n: p.detach().clone() for n, p in method.named_parameters()}
    res["paramsK"] = {n: p.detach().clone() for n, p in method.named_parameters()}
    res["buffersK"] = {n: b.detach().clone() for n, b in method.named_buffers()}

    # the op alone on fixed z (temperature = the default 0.2)
    tau = cfg["temperature"]
    op = {}
    for name, fn in (("nt_xent", nt_xent), ("nt_xent_ref", nt_xent_ref)):
        z = data["z"].clone().to(dt).requires_grad_(True)
        loss = fn(z[:N], z[N:], tau)
        loss.backward()
        op[name] = (loss.detach().double(), z.grad.detach().clone())
    res["op"] = op
    torch.save(res, out)
    print(f"[{tag}] {res['fastssl_file']} backend={res['backend']} dtype={dtype}: losses {res['loss']}")


# --------------------------------------------------------------------------------------------- compare


def _mx(a: dict, b: dict):
    """(max abs diff, max rel diff = max|a-b| / max|b| per tensor, worst tensor, #tensors not bitwise equal)."""
    worst, worst_rel, worst_name, neq = 0.0, 0.0, None, 0
    for k in b:
        x, y = a[k].double(), b[k].double()
        d = (x - y).abs().max().item() if x.numel() else 0.0
        if not torch.equal(a[k].to(b[k].dtype), b[k]):
            neq += 1
        rel = d / max(y.abs().max().item(), 1e-30)
        worst = max(worst, d)
        if rel > worst_rel:
            worst_rel, worst_name = rel, k
    return worst, worst_rel, worst_name, neq


def _l2(a: dict, b: dict) -> float:
    """global relative L2 difference over all tensors: ||a - b|| / ||b||"""
    num = sum(((a[k].double() - b[k].double()) ** 2).sum().item() for k in b)
    den = sum((b[k].double() ** 2).sum().item() for k in b)
    return (num / max(den, 1e-300)) ** 0.5


def _delta(r, key, base):
    """parameter change of a run (params after - init), for relative comparisons of updates"""
    return {k: r[key][k].double() - base["init"][k].double() for k in r[key]}


def _updates(x, y, key):
    """(x's update, y's update, _mx of the two) for the parameters saved under ``key``: computed once."""
    dx, dy = _delta(x, key, x), _delta(y, key, y)
    return dx, dy, _mx(dx, dy)

def compare():
    runs = {p.stem: torch.load(p) for p in sorted(OUT.glob("run_*.pt"))}
    print("runs:", ", ".join(runs))
    a = runs["run_858_default"]
    # config / groups
    for name, r in runs.items():
        if r["cfg"] != a["cfg"]:
            diff = {k: (a["cfg"].get(k), r["cfg"].get(k)) for k in set(a["cfg"]) | set(r["cfg"])
                    if a["cfg"].get(k) != r["cfg"].get(k)}
            print(f"cfg differs {name}: {diff}")
        groups_eq = [{k: v for k, v in g.items()} for g in r["groups"]] == a["groups"]
        print(f"{name}: optimizer {r['opt_type']}, groups identical to 858: {groups_eq}")
    g = a["groups"]
    print("858 groups:", [{k: (v if k != 'params' else f'{len(v)} params, e.g. {v[:3]}') for k, v in gg.items()}
                          for gg in g])
    print("cfg (858):", {k: a["cfg"][k] for k in ("arch", "width", "image_size", "batch_size", "epochs", "optimizer",
                                                 "lr", "weight_decay", "momentum", "warmup_epochs", "temperature",
                                                 "proj_hidden", "proj_dim", "jitter", "min_scale", "seed",
                                                 "precision") if k in a["cfg"]})
    print()
    pairs = [("run_858_default", "run_e8c_default", "858 default vs e8c default  (the 53.4 vs 45.3 pair)"),
             ("run_858_ref", "run_e8c_ref", "858 ref     vs e8c ref"),
             ("run_858_default", "run_858_ref", "858 default vs 858 ref      (rounding control)"),
             ("run_e8c_default", "run_e8c_ref", "e8c default vs e8c ref      (the 45.3 vs 49.4 pair)"),
             ("run_858_default", "run_e8c_ref", "858 default vs e8c ref")]
    f64 = runs.get("run_e8c_float64")
    print("columns: relmax = worst tensor's max|a-b|/max|b|; L2 = global ||a-b||/||b|| over all tensors; "
          "upd = params - init")
    print(f"{'pair':52s} {'init':>5s} {'loss0 diff':>10s} {'grad0 relmax':>12s} {'grad0 L2':>9s} {'upd1 relmax':>11s} "
          f"{'upd1 L2':>9s} {'updK relmax':>11s} {'updK L2':>9s} {'paramsK L2':>10s} #grads!=  worst updK tensor")
    for x, y, label in pairs:
        if x not in runs or y not in runs:
            continue
        rx, ry = runs[x], runs[y]
        init = _mx(rx["init"], ry["init"])
        l0 = abs(rx["loss"][0] - ry["loss"][0])
        gr = _mx(rx["grads"], ry["grads"])
        (d1x, d1y, u1), (dkx, dky, uk) = (_updates(rx, ry, k) for k in ("params1", "paramsK"))
        print(f"{label:52s} {'same' if init[3] == 0 else 'DIFF':>5s} {l0:10.3e} {gr[1]:12.3e} "
              f"{_l2(rx['grads'], ry['grads']):9.2e} {u1[1]:11.3e} {_l2(d1x, d1y):9.2e} {uk[1]:11.3e} "
              f"{_l2(dkx, dky):9.2e} {_l2(rx['paramsK'], ry['paramsK']):10.2e} {gr[3]:2d}/{len(rx['grads'])}  {uk[2]}")
    print()
    for name, r in runs.items():
        losses, cos = [f"{v:.7f}" for v in r["loss"]], [f"{v:.5f}" for v in r["pos_cos"]]
        print(f"{name:18s} loss per step {losses} pos_cos {cos}")
    if f64 is not None:
        print("\nerror against the float64 step (e8c code, whole model in fp64; rel = max|d| / max|ref| per tensor, "
              "worst):")
        for name in ("run_858_default", "run_858_ref", "run_e8c_default", "run_e8c_ref"):
            if name not in runs:
                continue
            r = runs[name]
            gr = _mx(r["grads"], f64["grads"])
            (d1, d1f, u1), (dk, dkf, uk) = (_updates(r, f64, k) for k in ("params1", "paramsK"))
            print(f"  {name:18s} loss0 {abs(r['loss'][0] - f64['loss'][0]):.2e}  grad0 relmax {gr[1]:.2e} ({gr[2]}) "
                  f"L2 {_l2(r['grads'], f64['grads']):.2e}  update1 relmax {u1[1]:.2e} L2 {_l2(d1, d1f):.2e}  "
                  f"update{STEPS} relmax {uk[1]:.2e} ({uk[2]}) L2 {_l2(dk, dkf):.2e}")
        # gradients that are exactly zero in exact arithmetic (a bias right before a BatchNorm): pure rounding
        gf = f64["grads"]
        tiny = [k for k in gf if gf[k].abs().max() < 1e-9 * max(v.abs().max() for v in gf.values())]
        print(f"  tensors whose float64 gradient is ~0 (rounding noise only, |g| < 1e-9 max): {tiny}")
    print(f"\nNT-Xent op alone on z [2N={2 * N}, 128], tau 0.2 (loss, max|dgrad| / max|grad|):")
    truth = f64["op"]["nt_xent_ref"] if f64 is not None else None
    rows = []
    for name, r in runs.items():
        for opn, (loss_v, gz) in r["op"].items():
            rows.append((f"{name}:{opn}", loss_v, gz))
    base = rows[0]
    for label, loss_v, gz in rows:
        s = f"  {label:36s} loss {float(loss_v):.9f}"
        if truth is not None:
            s += (f"  |dloss| vs f64 {abs(float(loss_v) - float(truth[0])):.2e}  grad rel vs f64 "
                  f"{((gz.double() - truth[1].double()).abs().max() / truth[1].abs().max()).item():.2e}")
        s += f"  bitwise == {base[0]}: {torch.equal(gz.double(), base[2].double()) and float(loss_v) == float(base[1])}"
        print(s)


def main():
    OUT.mkdir(exist_ok=True)
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        return child(sys.argv[2], sys.argv[3], *(sys.argv[4:5] or []))
    if len(sys.argv) > 1 and sys.argv[1] == "compare":
        return compare()
    if not INPUTS.exists():
        make_inputs()
    jobs = [("858", "default", "float32"), ("e8c", "default", "float32"), ("858", "ref", "float32"),
            ("e8c", "ref", "float32"), ("e8c", "default", "float64")]
    for wt, backend, dtype in jobs:
        out = OUT / (f"run_{wt}_{backend}.pt" if dtype == "float32" else f"run_{wt}_{dtype}.pt")
        if out.exists():
            continue
        env = {**os.environ, "PYTHONPATH": str(WT[wt])}
        env.pop("FASTSSL_BACKEND", None)
        if backend != "default":
            env["FASTSSL_BACKEND"] = backend
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "child", f"{wt}/{backend}/{dtype}", str(out),
                        dtype], cwd=WT[wt], env=env, check=True)
    compare()


if __name__ == "__main__":
    main()
