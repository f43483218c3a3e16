"""Markdown tables from ``python -m jaxmm --json`` results: per case the jaxmm / jnp step ratio,
the achieved TFLOP/s and its fraction of the device's peak, and jaxmm / torch.

Usage: ``python scripts/gpu_table.py RESULTS.json [...] [--peak-tflops N]``. The peak defaults to
the dense bf16 tensor-core peak of the known devices below (the same figure is used for float32,
so that the column reads "fraction of what the chip can do at best").
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

# Dense (not sparse) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s.
BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L4": 121.0}


def _peak(device: str, override: float | None) -> float | None:
    if override:
        return override
    return next((p for name, p in BF16_PEAK_TFLOPS.items() if name in device), None)


def table(results: dict, peak: float | None) -> str:
    rows = results["benchmark"]
    dtype = rows[0]["dtype"]
    lines = [
        f"{dtype} on {results['device']}, JAX {results['jax']}"
        + (f", bf16 peak {peak:g} TFLOP/s" if peak else ""),
        "",
        "| case | jaxmm ms | jnp ms | jaxmm / jnp | TFLOP/s | of peak | jaxmm / torch |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        tflops = r["gflops"] / 1e3
        torch = f"{r['torch_ratio']:.3f}" if r.get("torch_ratio") else "n/a"
        of_peak = f"{tflops / peak:.2f}" if peak else "n/a"
        lines.append(
            f"| {r['case']} | {r['jaxmm_ms']:.3f} | {r['reference_ms']:.3f} | {r['ratio']:.3f} "
            f"| {tflops:.1f} | {of_peak} | {torch} |"
        )
    lines.append("")
    lines.append(f"median jaxmm / jnp: {statistics.median(r['ratio'] for r in rows):.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--peak-tflops", type=float, help="the device's peak, TFLOP/s")
    args = parser.parse_args(argv)
    for path in args.results:
        results = json.loads(path.read_text())
        print(table(results, _peak(results["device"], args.peak_tflops)))
        print()


if __name__ == "__main__":
    main()
