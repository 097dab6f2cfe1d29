"""Time soft Spearman (forward + backward) with every soft-rank backend, and measure its error.

Each backend computes ``soft_spearman(pred, target)`` on (B, n) inputs; the reference is the
authors' choice of soft ranks, a bitonic differentiable sorting network (diffsort, steepness 5,
logistic_phi; Petersen et al., ICML 2021, as used by the ReLoss authors' code), plugged into the
same correlation. The error column is max over rows of |rho_soft - rho_exact|.

Prints a markdown table and writes it, with a PNG of the timings, to a new folder under --out.
On a machine with a GPU, the GPU figures are added to the same table and plot.

    python -m tools.benchmarks.rank [--out work_dirs/benchmark_rank] [--device cpu cuda]
"""
import argparse
import os
import platform
import statistics
import time

import torch

import reloss
from reloss.spearman import correlate_with_fixed

SIZES = ((1, 256), (1, 1024), (1, 4096), (64, 256), (256, 128))
BACKENDS = ("auto", "torchsort", "pairwise", "diffsort")
_DIFFSORT_NETWORKS = {}


def diffsort_spearman(pred, target):
    """Soft Spearman with diffsort's soft ranks (the reference; raw values, as the authors did)."""
    from diffsort import DiffSortNet

    n = pred.shape[-1]
    key = (n, str(pred.device))
    if key not in _DIFFSORT_NETWORKS:
        _DIFFSORT_NETWORKS[key] = DiffSortNet("bitonic", n, device=str(pred.device), steepness=5,
                                    distribution="logistic_phi")
    _, permutation = _DIFFSORT_NETWORKS[key](pred)  # (B, n, n): soft probability that i lands at j
    ranks = permutation @ torch.arange(1, n + 1, dtype=pred.dtype, device=pred.device)
    return correlate_with_fixed(ranks, reloss.exact_rank(target).to(ranks.dtype))


def make_inputs(batch, n, device, seed=0):
    """pred ~ N(0, 1); target = a * pred + noise, with a spread over rows: rho covers [0, 0.95]."""
    generator = torch.Generator().manual_seed(seed)
    pred = torch.randn(batch, n, generator=generator)
    slope = torch.linspace(0, 3, batch).unsqueeze(-1) if batch > 1 else torch.ones(1, 1)
    target = slope * pred + torch.randn(batch, n, generator=generator)
    return pred.to(device), target.to(device)


def runner(backend):
    if backend == "diffsort":
        return diffsort_spearman
    return lambda pred, target: reloss.soft_spearman(pred, target, backend=backend)


def time_forward_backward(fn, pred, target, budget_s, max_repeats):
    """Median wall time (ms) of forward + backward, after one warm-up call."""
    sync = torch.cuda.synchronize if pred.is_cuda else (lambda: None)
    times = []
    start = time.perf_counter()
    for i in range(max_repeats + 1):
        leaf = pred.clone().requires_grad_()
        sync()
        t0 = time.perf_counter()
        fn(leaf, target).sum().backward()
        sync()
        if i:
            times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s and len(times) >= 3:
            break
    return 1e3 * statistics.median(times)


def skip_reason(backend, batch, n, device):
    if backend == "diffsort" and n * n * batch > (1 << 22 if device == "cpu" else 1 << 24):
        return "skipped: its (B, n, n) matrices per layer need too much time and memory"
    if backend == "torchsort" and not reloss.torchsort_available(device):
        return f"skipped: torchsort has no {device} kernel here"
    return None


def machine(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        model = names[0] if names else model
    return f"{model}, {torch.get_num_threads()} threads"


def run(devices, budget_s, max_repeats):
    rows = []
    for device in devices:
        for batch, n in SIZES:
            pred, target = make_inputs(batch, n, device)
            exact = reloss.spearman(pred, target)
            for backend in BACKENDS:
                reason = skip_reason(backend, batch, n, device)
                row = dict(device=device, batch=batch, n=n, backend=backend, ms=None, error=None,
                           note=reason or "")
                if reason is None:
                    fn = runner(backend)
                    row["ms"] = time_forward_backward(fn, pred, target, budget_s, max_repeats)
                    with torch.no_grad():
                        row["error"] = float((fn(pred, target) - exact).abs().max())
                    if backend == "auto":
                        row["note"] = f"runs {reloss.resolve_backend('auto', pred)}"
                rows.append(row)
                shown = "-" if row["ms"] is None else f"{row['ms']:.3f} ms"
                print(f"  {device} ({batch},{n}) {backend:9s} {shown}", flush=True)
    return rows


def markdown(rows, devices):
    lines = [f"Soft Spearman forward+backward, median ms (max |rho_soft - rho_exact|); "
             f"torch {torch.__version__}."]
    for device in devices:
        lines.append(f"- {device}: {machine(device)}")
    sizes = [f"({b},{n})" for b, n in SIZES]
    lines += ["", "| device | backend | " + " | ".join(sizes) + " |",
              "|---|---|" + "---|" * len(sizes)]
    for device in devices:
        for backend in BACKENDS:
            cells = []
            for batch, n in SIZES:
                row = next(r for r in rows if (r["device"], r["backend"], r["batch"], r["n"])
                           == (device, backend, batch, n))
                cells.append("-" if row["ms"] is None
                             else f"{row['ms']:.3f} ({row['error']:.4f})")
            lines.append(f"| {device} | {backend} | " + " | ".join(cells) + " |")
    lines += ["", "Ratios in this run: diffsort time / auto time (speed-up over the reference), "
              "and auto time / fastest time.", "",
              "| device | ratio | " + " | ".join(sizes) + " |", "|---|---|" + "---|" * len(sizes)]
    for device in devices:
        speedup, to_best = [], []
        for batch, n in SIZES:
            times = {r["backend"]: r["ms"] for r in rows
                     if (r["device"], r["batch"], r["n"]) == (device, batch, n) and r["ms"]}
            speedup.append(f"{times['diffsort'] / times['auto']:.0f}x" if "diffsort" in times
                           else "-")
            to_best.append(f"{times['auto'] / min(times.values()):.2f}")
        lines.append(f"| {device} | diffsort / auto | " + " | ".join(speedup) + " |")
        lines.append(f"| {device} | auto / fastest | " + " | ".join(to_best) + " |")
    notes = sorted({f"{r['device']} {r['backend']}: {r['note']}" for r in rows
                    if r["note"].startswith("skipped")})
    return "\n".join(lines + [""] + [f"- {note}" for note in notes]) + "\n"


def plot(rows, devices, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(devices), figsize=(6.5 * len(devices), 4), squeeze=False)
    labels = [f"({b},{n})" for b, n in SIZES]
    width = 0.8 / len(BACKENDS)
    for ax, device in zip(axes[0], devices, strict=True):
        for i, backend in enumerate(BACKENDS):
            values = [next((r["ms"] for r in rows if (r["device"], r["backend"], r["batch"], r["n"])
                            == (device, backend, b, n)), None) for b, n in SIZES]
            xs = [j + (i - (len(BACKENDS) - 1) / 2) * width for j, v in enumerate(values) if v]
            ax.bar(xs, [v for v in values if v], width, label=backend)
        ax.set_yscale("log")
        ax.set_xticks(range(len(SIZES)), labels)
        ax.set_xlabel("(B, n)")
        ax.set_ylabel("forward + backward, ms (log)")
        ax.set_title(f"soft Spearman on {device}: {machine(device)}", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="work_dirs/benchmark_rank",
                        help="folder; the results go to a new time-stamped folder inside it")
    parser.add_argument("--device", nargs="+", choices=("cpu", "cuda"),
                        help="default: cpu, and cuda when a GPU is available")
    parser.add_argument("--budget", type=float, default=1.0,
                        help="seconds of repeats per measurement (at least 3 repeats)")
    parser.add_argument("--max-repeats", type=int, default=50)
    args = parser.parse_args()
    devices = args.device or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" in devices and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU is available")
    out = os.path.join(args.out, time.strftime("%Y%m%d_%H%M%S"))
    os.makedirs(out)  # a new folder: earlier results are never overwritten

    rows = run(devices, args.budget, args.max_repeats)
    table = markdown(rows, devices)
    print("\n" + table)
    with open(os.path.join(out, "benchmark_rank.md"), "w") as f:
        f.write(table)
    plot(rows, devices, os.path.join(out, "benchmark_rank.png"))
    print(f"wrote {out}/benchmark_rank.md and {out}/benchmark_rank.png")


if __name__ == "__main__":
    main()
