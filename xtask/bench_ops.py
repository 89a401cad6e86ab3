"""PyTorch's side of `cargo xtask bench --ops`: the single ops of crates/clip-core/benches/ops.rs at
the same shapes, printed in the same line format (`op <name> [<shape>]: <microseconds> us`).

    python xtask/bench_ops.py --iters 20 --threads 2
"""
import argparse
import os
import time

import torch
import torch.nn.functional as F


def median_micros(iters, f):
    """Two warm-up runs, then the median of `iters` timed runs, in microseconds."""
    f()
    f()
    times = []
    for _ in range(max(iters, 1)):
        start = time.perf_counter()
        f()
        times.append((time.perf_counter() - start) * 1e6)
    times.sort()
    return times[len(times) // 2]


def report(name, shape, micros):
    print(f"op {name} [{','.join(str(s) for s in shape)}]: {micros:.1f} us")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads")
    with torch.inference_mode():
        for rows, width, hidden in [(1600, 768, 3072), (544, 64, 256)]:
            x = torch.randn(rows, width)
            w = torch.randn(width, hidden)
            report("matmul", [rows, width, hidden], median_micros(args.iters, lambda: x @ w))
            h = torch.randn(rows, hidden)
            report("gelu", [rows, hidden], median_micros(args.iters, lambda: F.gelu(h)))
            norm = torch.nn.LayerNorm(width)
            report("layer_norm", [rows, width], median_micros(args.iters, lambda: norm(x)))
        for batch, heads, tokens, head_dim in [(32, 12, 50, 64), (32, 2, 17, 32)]:
            q = torch.randn(batch, heads, tokens, head_dim)
            report("attention", [batch, heads, tokens, head_dim],
                   median_micros(args.iters, lambda: F.scaled_dot_product_attention(q, q, q)))
    for rows, cols in [(49408, 64), (49408, 512), (768, 3072)]:
        weight = torch.nn.Parameter(torch.randn(rows, cols))
        weight.grad = torch.randn(rows, cols)
        optimizer = torch.optim.AdamW([weight], lr=1e-5, weight_decay=0.2)
        report("adamw_step", [rows, cols], median_micros(args.iters, optimizer.step))


if __name__ == "__main__":
    main()
