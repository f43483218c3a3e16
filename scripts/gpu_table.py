"""Markdown tables from ``python -m jaxmm --json`` results: per case the jaxmm / jnp step ratio,
the achieved TFLOP/s and its fraction of the device's peak, and jaxmm / torch; then
``linear_cross_entropy``'s compiled temporaries and step time against the naive loss.

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


def cross_entropy_table(results: dict) -> str:
    """The linear cross-entropy section: compiled temporaries (MiB) and step time per loss."""
    section = results.get("linear_cross_entropy")
    if not section:
        return ""
    names = list(section["memory"][0]["temp_bytes"])
    mib = 2**20
    lines = [
        f"linear cross-entropy on {results['device']}, JAX {results['jax']}: compiled temporaries",
        "",
        "| tokens × d × V | logits MiB | " + " | ".join(f"{n} MiB" for n in names) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in names) + " |",
    ]
    for r in section["memory"]:
        lines.append(
            f"| {r['tokens']} × {r['d']} × {r['vocab']} | {r['logits_bytes'] / mib:.0f} | "
            + " | ".join(f"{r['temp_bytes'][n] / mib:.1f}" for n in names)
            + " |"
        )
    lines.append("")
    for t in section["time"]["rows"]:
        lines.append(
            f"step time at {t['tokens']} × {t['d']} × {t['vocab']}: "
            + ", ".join(f"{n} {t['ms'][n]:.2f} ms ({t['ratio'][n]:.2f}x naive)" for n in t["ms"])
        )
    return "\n".join(lines)


def ragged_table(results: dict) -> str:
    """The ragged_dot section: forward and value_and_grad times and compiled temporaries."""
    rows = results.get("ragged_dot")
    if not rows:
        return ""
    names = list(rows[0]["step_ms"])
    lines = [
        f"ragged_dot on {results['device']}, JAX {results['jax']}: forward ms, value_and_grad ms,"
        " compiled temp MiB",
        "",
        "| case | " + " | ".join(f"fwd {n} | step {n} | MiB {n}" for n in names) + " |",
        "| --- | " + " | ".join("---: | ---: | ---:" for _ in names) + " |",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | "
            + " | ".join(
                f"{r['forward_ms'][n]:.2f} | {r['step_ms'][n]:.2f} | {r['temp_mib'][n]:.1f}"
                for n in names
            )
            + " |"
        )
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
        if results.get("benchmark", [{}])[0].get("dtype") == "float32":  # measured in float32
            print(cross_entropy_table(results))
            print()
            print(ragged_table(results))
            print()


if __name__ == "__main__":
    main()
