"""Train an effconv model on scikit-learn's bundled digits dataset, on the CPU.

    python -m effconv.examples.train_digits --model squeezenet1_1
    python -m effconv.examples.train_digits --model mobilenet_v2 --baseline torch

The 1,797 8x8 grey digits are upsampled to --size pixels and replicated to
3 channels, split 80/20 (fixed seed), and trained with AdamW, a one-cycle
schedule and small random shifts. ``--baseline torch`` trains torchvision's
implementation of the same architecture, from the same initial weights, on
the same batches, for comparison.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

MODELS = ("squeezenet1_1", "squeezenet1_0", "mobilenet_v2", "mobilenet_v1")


def load_digits(size: int, seed: int = 0):
    from sklearn.datasets import load_digits as sk_load

    data = sk_load()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = ((x - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = len(y) // 5
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def build(name: str, backend: str, num_classes: int = 10) -> torch.nn.Module:
    import torchvision

    import effconv.models

    if backend == "torch":
        if name == "mobilenet_v1":
            raise SystemExit("torchvision has no mobilenet_v1; pick another --model for --baseline torch")
        return getattr(torchvision.models, name)(num_classes=num_classes)
    return getattr(effconv.models, name)(num_classes=num_classes)


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to max_shift pixels (zero fill): cheap augmentation."""
    if max_shift == 0:
        return x
    padded = F.pad(x, [max_shift] * 4, value=-1.0)
    n, _, h, w = x.shape
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2, n), generator=gen)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


class Progress:
    """A one-line text progress bar on stderr."""

    def __init__(self, total: int, label: str, enabled: bool = True):
        self.total, self.label, self.enabled = total, label, enabled and total > 0
        self.start = time.perf_counter()

    def update(self, done: int, extra: str = "") -> None:
        if not self.enabled:
            return
        width = 30
        filled = int(width * done / self.total)
        elapsed = time.perf_counter() - self.start
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} "
                         f"{elapsed:5.1f}s {extra}")
        sys.stderr.flush()
        if done == self.total:
            sys.stderr.write("\n")


@torch.no_grad()
def evaluate(model, x, y, batch: int) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(y), batch):
        correct += (model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item()
    return correct / max(len(y), 1)


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=MODELS, default="squeezenet1_1")
    ap.add_argument("--baseline", choices=("effconv", "torch"), default="effconv",
                    help="'torch': torchvision's layers instead of effconv's")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--size", type=int, default=64, help="image side after upsampling")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = load_digits(args.size, args.seed)
    model = build(args.model, args.baseline).to(memory_format=torch.channels_last)
    x_train = x_train.contiguous(memory_format=torch.channels_last)
    x_test = x_test.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    steps_per_epoch = (len(y_train) + args.batch_size - 1) // args.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch,
                                                pct_start=0.25)
    gen = torch.Generator().manual_seed(args.seed)
    print(f"{args.model} on {'torchvision' if args.baseline == 'torch' else 'effconv'} layers: "
          f"{len(y_train)} train / {len(y_test)} test digits at {args.size}x{args.size}, "
          f"{args.epochs} epochs, {torch.get_num_threads()} threads")
    acc = 0.0
    for epoch in range(1, args.epochs + 1):
        model.train()
        perm = torch.randperm(len(y_train), generator=gen)
        bar = Progress(steps_per_epoch, f"epoch {epoch:2d}/{args.epochs}", not args.no_progress)
        start = time.perf_counter()
        loss_sum, seen = 0.0, 0
        for step in range(steps_per_epoch):
            idx = perm[step * args.batch_size:(step + 1) * args.batch_size]
            xb = random_shift(x_train[idx], max(1, args.size // 16), gen).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(xb), y_train[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            seen += len(idx)
            bar.update(step + 1, f"loss {loss_sum / seen:.3f}")
        train_time = time.perf_counter() - start
        acc = evaluate(model, x_test, y_test, 256)
        print(f"epoch {epoch:2d}: loss {loss_sum / seen:.4f}  test accuracy {100 * acc:.2f}%  "
              f"time {train_time:.2f}s ({1000 * train_time / steps_per_epoch:.0f} ms/step)")
    print(f"final test accuracy: {100 * acc:.2f}%")
    return acc


if __name__ == "__main__":
    main()
