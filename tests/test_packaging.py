"""jaxmm as a package: its version, its types as a user's type checker reads them, its wheel."""

import importlib.metadata
import pathlib
import subprocess
import sys
import zipfile

import pytest

import jaxmm

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_version_is_the_installed_distributions():
    assert jaxmm.__version__ == importlib.metadata.version("jaxmm")


@pytest.mark.full  # half a minute: mypy reads JAX's annotations
def test_a_strict_type_checker_accepts_the_documented_calls(tmp_path):
    api = pytest.importorskip("mypy.api")
    snippet = tmp_path / "snippet.py"
    snippet.write_text(
        "import jax.numpy as jnp\n"
        "import jaxmm\n"
        "x, w = jnp.ones((4, 3)), jnp.ones((3, 2))\n"
        "y = jaxmm.matmul(x, w, residual_dtype=(jnp.bfloat16, None))\n"
        "z = jaxmm.einsum('ij,jk->ik', x, w, residual_dtype=[jnp.float16, None])\n"
        "c = jaxmm.custom_vjp.matmul(x, w, residual_dtype=jnp.float8_e4m3fn)\n"
        "u = jaxmm.matmul(x, w, residual_dtype=3)\n"  # not a dtype: rejected
    )
    out, _, status = api.run(["--strict", "--no-incremental", str(snippet)])
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert status == 1 and len(errors) == 1 and "snippet.py:7:" in errors[0], out


@pytest.mark.full
def test_the_wheel_holds_the_license_and_the_type_marker(tmp_path):
    # Built from the committed files alone, as from a fresh clone.
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(clone)],
        check=True,
    )
    (wheel,) = tmp_path.glob("jaxmm-*.whl")
    assert wheel.name.startswith(f"jaxmm-{jaxmm.__version__}-")
    names = zipfile.ZipFile(wheel).namelist()
    license_files = [n for n in names if n.endswith("LICENSE") and ".dist-info/" in n]
    assert license_files and "jaxmm/py.typed" in names
    text = zipfile.ZipFile(wheel).read(license_files[0]).decode()
    assert "Apache License" in text and "Version 2.0" in text
