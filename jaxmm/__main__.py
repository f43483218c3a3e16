"""``python -m jaxmm`` (or ``jaxmm``): self-check against JAX's autodiff, then a benchmark (the
products, ``linear_cross_entropy`` against the naive loss, then scanned and per-token models
against the same models with ``jnp``: memory and training-step time)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax


class Progress:
    """Progress on one self-rewriting line of a terminal; on anything else (logs, CI) silent, so
    that what is printed is the results."""

    def __init__(self, total: int, title: str):
        self.total, self.done, self.title = total, 0, title
        self.live = sys.stderr.isatty()

    def step(self, label: str) -> None:
        self.done += 1
        if not self.live:
            return
        line = f"{self.title} {self.done}/{self.total}: {label}"[:79]
        sys.stderr.write(f"\r{line:<79}")
        if self.done == self.total:
            sys.stderr.write("\r" + " " * 79 + "\r")
        sys.stderr.flush()


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return sizes


def _prog() -> str:
    """The command as the user typed it: ``jaxmm`` (the installed script) or ``python -m jaxmm``."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "python -m jaxmm" if invoked in ("", "__main__.py", "-c") else invoked


def _check_output_path(parser: argparse.ArgumentParser, option: str, path: str) -> None:
    """Refuse, before any work, an output path that cannot be written."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        parser.error(f"{option} {path}: is a directory, not a file path")
    if not os.path.isdir(folder):
        parser.error(f"{option} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        parser.error(f"{option} {path}: folder {folder} is not writable")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=_prog(),
        description="Check jaxmm against JAX's autodiff, then benchmark its forward+backward step.",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sweep, fewer repeats")
    parser.add_argument(
        "--sizes",
        type=_sizes,
        help="square sizes of the step benchmark, e.g. 64,256,1024; the two MLP cases are sized "
        "from the largest, and the eager/compile table always uses 16,64,256",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="benchmark dtype (default float32)",
    )
    parser.add_argument(
        "--json", metavar="PATH", help="write the self-check and benchmark results here"
    )
    parser.add_argument(
        "--plot", metavar="PATH", help="write a PNG chart of the benchmark (needs matplotlib)"
    )
    parser.add_argument("--no-benchmark", action="store_true", help="run the self-check only")
    args = parser.parse_args(argv)
    if args.plot and args.no_benchmark:
        parser.error("--plot charts the benchmark, which --no-benchmark turns off")
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path:
            _check_output_path(parser, option, path)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: pip install matplotlib")
    return args


def _timed_section(report: Any, quick: bool) -> tuple[Any, ...]:
    """Run one benchmark section's ``report``, print its table (its last result) and how long it
    took, and return its lists of rows (for the JSON)."""
    start = time.perf_counter()
    *rows, table = report(quick=quick)
    print(f"\n{table} ({time.perf_counter() - start:.0f} s)")
    return tuple(rows)


def main(argv: Sequence[str] | None = None) -> int:
    from . import _benchmark, _selfcheck

    args = parse_args(argv)
    device = jax.devices()[0]
    print(
        f"jaxmm self-check and benchmark on {device.platform} ({device.device_kind}), "
        f"JAX {jax.__version__}, {platform.machine()}"
    )

    # Self-check.
    cases = list(_selfcheck.cases())
    progress = Progress(len(cases), "self-check")
    rows, failures = [], 0
    for case in cases:
        problem = _selfcheck.run_case(case)
        failures += problem is not None
        rows.append((case, problem))
        progress.step(case.label)
    print(
        f"\nself-check against JAX's autodiff, {len(rows)} cases (f64, bf16, complex: vjp in that "
        "dtype;\ngrad²: vjp of the gradient; residual: residuals narrowed; custom_vjp, "
        "experimental: jaxmm.custom_vjp's vjp, jaxmm.experimental's jvp)"
    )
    print(_selfcheck.table(rows))
    from . import _clipping_benchmark

    clipping_checks = _clipping_benchmark.self_check()  # clipped_grad against vmap of grad
    for label, problem in clipping_checks:
        failures += problem is not None
        print(f"{label:<32}  {'PASS' if problem is None else 'FAIL: ' + problem}")
    for case, problem in rows:
        if problem is not None:
            print(f"FAIL {case.label}: {problem}")
    checks = len(rows) + len(clipping_checks)
    print(f"self-check: {checks - failures} passed, {failures} failed")

    results, overheads = [], []
    if not args.no_benchmark:
        sizes = args.sizes or (_benchmark.QUICK_SIZES if args.quick else _benchmark.SQUARE_SIZES)
        shapes = _benchmark.shapes(sizes)
        progress = Progress(len(shapes), "benchmark")
        start = time.perf_counter()
        for name, m, k, n in shapes:
            results.append(
                _benchmark.measure(name, m, k, n, args.dtype, repeats=3 if args.quick else 7)
            )
            progress.step(name)
        print(
            f"\nforward+backward step, {args.dtype}, jitted, median of interleaved repeats "
            f"({time.perf_counter() - start:.0f} s)"
        )
        peer = results[0].torch_ratio is not None
        experimental = results[0].experimental_ratio is not None
        print(
            f"{'case':<24} {'jaxmm ms':>9} {'jnp ms':>9} {'ratio':>6} {'GFLOP/s':>8} "
            f"{'of limit':>8}"
            + (f" {'exp. ratio':>10}" if experimental else "")
            + (f" {'torch ms':>9} {'/torch':>6}" if peer else "")
        )
        for r in results:
            print(
                f"{r.case:<24} {r.jaxmm_ms:9.3f} {r.reference_ms:9.3f} {r.ratio:6.3f} "
                f"{r.gflops:8.1f} {r.fraction_of_limit:8.2f}"
                + (f" {r.experimental_ratio:10.3f}" if experimental else "")
                + (f" {r.torch_ms:9.3f} {r.torch_ratio:6.3f}" if peer else "")
            )
        ratios = [r.ratio for r in results]
        print(
            f"median ratio jaxmm/jnp: {statistics.median(ratios):.3f} (max {max(ratios):.3f})"
            + ("" if peer else "; PyTorch peer not run (pip install torch to add it)")
        )
        if experimental:
            exp_ratios = [r.experimental_ratio or 0.0 for r in results]
            jvp_ratios = [r.jvp_ratio or 0.0 for r in results]
            print(
                f"exp. ratio: jaxmm.experimental / jnp; median {statistics.median(exp_ratios):.3f}"
            )
            print("\nforward mode: jvp step (forward and both tangent products), jitted")
            print(f"{'case':<24} {'exp. ms':>9} {'jnp ms':>9} {'ratio':>6}")
            for r in results:
                print(f"{r.case:<24} {r.jvp_ms:9.3f} {r.jvp_reference_ms:9.3f} {r.jvp_ratio:6.3f}")
            print(
                "median ratio jaxmm.experimental/jnp, jvp step: "
                f"{statistics.median(jvp_ratios):.3f}"
            )
        overheads = _benchmark.overheads(repeats=3 if args.quick else 7)
        print("\nun-jitted (eager) gradients and compile time, jaxmm / jnp.matmul autodiff")
        print(
            f"{'size':>6} {'eager':>7} {'eager, dA only':>15} {'dA only speed-up':>17} "
            f"{'compile':>8}"
        )
        for o in overheads:
            print(
                f"{o.size:6d} {o.eager_ratio:7.3f} {o.eager_one_operand_ratio:15.3f} "
                f"{o.one_operand_speedup:16.2f}x {o.compile_ratio:8.3f}"
            )

    cross_entropy: dict[str, Any] = {}
    models: dict[str, Any] = {}
    ragged: list[dict[str, Any]] = []
    clipping: dict[str, Any] = {}
    if not args.no_benchmark:
        from . import _cross_entropy_benchmark, _mechanisms_benchmark, _models_benchmark

        memory, timing = _timed_section(_cross_entropy_benchmark.report, args.quick)
        cross_entropy = {"memory": [r.as_dict() for r in memory], "time": timing.as_dict()}
        memory_rows, step_rows = _timed_section(_models_benchmark.report, args.quick)
        (mechanism_rows,) = _timed_section(_mechanisms_benchmark.report, args.quick)
        models = {
            "memory": [r.as_dict() for r in memory_rows],
            "steps": [r.as_dict() for r in step_rows],
            "mechanisms": [r.as_dict() for r in mechanism_rows],
        }
        from . import _ragged_benchmark

        ragged_rows, _ = _timed_section(_ragged_benchmark.report, args.quick)
        ragged = [r.as_dict() for r in ragged_rows]
        clipping = dict(
            zip(("memory", "time"), _timed_section(_clipping_benchmark.report, args.quick))
        )

    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "device": f"{device.platform} ({device.device_kind})",
                    "jax": jax.__version__,
                    "self_check": [
                        {
                            "case": c.name,
                            "shapes": c.shapes,
                            "dtype": c.dtype,
                            "transform": c.transform,
                            "passed": problem is None,
                            "problem": problem,
                        }
                        for c, problem in rows
                    ],
                    "benchmark": [r.as_dict() for r in results],
                    "overheads": [o.as_dict() for o in overheads],
                    "linear_cross_entropy": cross_entropy,
                    "models": models,
                    "ragged_dot": ragged,
                    "clipping": clipping,
                },
                f,
                indent=2,
            )
        print(f"results written to {args.json}")
    if args.plot:
        _benchmark.plot(results, args.plot)
        print(f"chart written to {args.plot}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
