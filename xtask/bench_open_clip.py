"""open_clip's side of `cargo xtask bench`: the measurements of crates/clip-core/benches/throughput.rs
(random weights, image and text encoding, one training step: forward, InfoNCE, backward, AdamW),
printed in the same line format so that xtask can put them side by side.

    python xtask/bench_open_clip.py --model ViT-B-32 --batches 1,8,32 --train-batch 32 --iters 3
    python xtask/bench_open_clip.py --model ViT-B-32 --batches 32,256 --train-batch 256 --device cuda

--model takes an open_clip model name or an open_clip JSON config (embed_dim, vision_cfg, text_cfg).
--device is torch's device (cpu or cuda). Everything runs in f32, as the Rust side does: no
autocast, and TF32 matrix products off. On cuda every timed run is bracketed by
torch.cuda.synchronize(), so queued kernels are counted.
"""
import argparse
import json
import os
import time

import torch
import open_clip


def captions(batch, context):
    """Token ids shaped like the Rust bench's: SOT, a few words, EOT, zero padding."""
    ids = torch.zeros(batch, context, dtype=torch.long)
    for row in range(batch):
        length = min(5 + row % 12, context - 1)
        ids[row, 0] = 49406
        for i in range(1, length):
            ids[row, i] = 320 + (row * 31 + i * 7) % 4000
        ids[row, length] = 49407
    return ids


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def items_per_second(items, iters, step, device):
    """Two warm-up runs, then items per second of the median of `iters` timed runs."""
    step()
    step()
    seconds = []
    for _ in range(max(iters, 1)):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    seconds.sort()
    return items / seconds[len(seconds) // 2]


def build(name):
    if name.endswith(".json"):
        with open(name) as f:
            cfg = json.load(f)
        model = open_clip.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"])
    else:
        model = open_clip.create_model(name, pretrained=None)
    return model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # f32 throughout, as on the Rust side: no TF32 in matrix products or convolutions.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device(args.device)
    model = build(args.model).to(device).eval()
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    context = model.context_length
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"open_clip {open_clip.__version__}, torch {torch.__version__}, device {args.device} ({where}), "
        f"{args.threads} threads, f32, model {args.model}"
    )
    with torch.inference_mode():
        for batch in [int(b) for b in args.batches.split(",")]:
            images = torch.randn(batch, 3, size, size, device=device)
            rate = items_per_second(batch, args.iters, lambda: model.encode_image(images, normalize=True), device)
            print(f"encode_image  batch {batch:>3}: {rate:8.2f} images/s")
            tokens = captions(batch, context).to(device)
            rate = items_per_second(batch, args.iters, lambda: model.encode_text(tokens, normalize=True), device)
            print(f"encode_text   batch {batch:>3}: {rate:8.2f} texts/s")
    model.train()
    batch = args.train_batch
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.2)
    loss_fn = open_clip.ClipLoss()
    images = torch.randn(batch, 3, size, size, device=device)
    tokens = captions(batch, context).to(device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        image, text, scale = model(images, tokens)[:3]
        loss = loss_fn(image, text, scale)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)

    rate = items_per_second(batch, args.iters, step, device)
    print(f"train step    batch {batch:>3}: {rate:8.2f} samples/s (forward + backward + AdamW)")


if __name__ == "__main__":
    main()
