"""jaxmm.ragged_dot(_general) against lax.ragged_dot(_general) (values, and derivatives where lax
has them) and against a float64 dense reference written group by group with masks (derivatives
in every ragged mode, vmap, second order)."""

import itertools
import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from reference import assert_close, assert_same_derivatives, raised_by, random_array

import jaxmm
from jaxmm import _ragged_tiles
from jaxmm.testing import check_jvp, check_vjp

Dims = lax.RaggedDotDimensionNumbers
RAGGED_DOT = Dims((([1], [1]), ([], [])), [0], [0])


def group_sizes(rng, total, groups, kind):
    """Sizes of ``groups`` groups over ``total`` rows: random with empty groups, one group
    taking every row, or leaving trailing rows in no group."""
    if kind == "all_in_one":
        sizes = np.zeros(groups, int)
        sizes[groups // 2] = total
    elif kind == "trailing":
        sizes = rng.multinomial(total - max(1, total // 4), np.ones(groups) / groups)
    else:
        sizes = rng.multinomial(total, np.ones(groups) / groups)
        sizes[rng.permutation(groups)[: groups // 3]] = 0
        sizes[0] += total - sizes.sum()
    return jnp.asarray(sizes, jnp.int32)


def masks(sizes, length):
    """``mask[..., e, r]``: row ``r`` of the ragged axis is in group ``e`` (per prefix index)."""
    ends = jnp.cumsum(sizes, axis=-1)
    starts = ends - sizes
    rows = jnp.arange(length).reshape((1,) * sizes.ndim + (length,))
    return (starts[..., None] <= rows) & (rows < ends[..., None])


# (lhs shape, rhs shape, dimension numbers, group sizes' prefix shape, the dense reference as an
# einsum of lhs, rhs and the group mask, ragged axis length, groups)
CASES = [
    ((13, 4), (3, 4, 5), RAGGED_DOT, (), "mk,gkn,gm->mn"),
    # Batch axis, an outer free axis x (own sizes), an inner one y, rhs's group axis in 2nd place.
    (
        (2, 3, 7, 2, 4),
        (2, 4, 3, 5),
        Dims((([4], [1]), ([0], [0])), [2], [2]),
        (2, 3),
        "bxmyk,bkgn,bxgm->bxmyn",
    ),
    ((4, 13), (13, 5), Dims((([1], [0]), ([], [])), [1], []), (), "mk,kn,gk->gmn"),
    (
        (2, 3, 2, 7, 2),
        (2, 2, 7, 2, 4),
        Dims((([2, 3, 4], [1, 2, 3]), ([0], [0])), [3], []),
        (2, 2),
        "bmxky,bxkyn,bxgk->gbmn",
    ),
    ((5, 3, 4), (5, 4, 2), Dims((([2], [1]), ([0], [0])), [0], []), (), "bmk,bkn->bmn"),
    # Contracting axes on both sides of the ragged one, paired in another order in rhs.
    ((2, 9, 3), (3, 3, 2, 4), Dims((([0, 2], [2, 1]), ([], [])), [1], [0]), (), "amc,gcan,gm->mn"),
    ((6, 9, 2), (2, 9, 4), Dims((([1, 2], [1, 0]), ([], [])), [1], []), (), "mky,ykn,gk->gmn"),
]
NAMES = ["rows", "rows_batch_outer_inner", "contracting", "contracting_batch", "batch"]
CASES = dict(zip([*NAMES, "rows_split_contraction", "contracting_inner_axis"], CASES))


def dense_reference(spec, dims, lhs_shape):
    """``spec`` of the operands and the one-hot group mask, in float64, cast back."""
    ragged = dims.lhs_ragged_dimensions[0]

    def reference(lhs, rhs, sizes):
        wide = [x.astype(jnp.float64) for x in (lhs, rhs)]
        if spec.count(",") == 1:  # ragged batch mode: no mask
            out = jnp.einsum(spec, *wide)
        else:
            out = jnp.einsum(spec, *wide, masks(sizes, lhs_shape[ragged]).astype(jnp.float64))
        return out.astype(jnp.result_type(lhs, rhs))

    return reference


def case_operands(case, kind="random", dtype=jnp.float32, seed=0):
    lhs_shape, rhs_shape, dims, prefix, spec = case
    rng = np.random.default_rng(seed)
    ragged = dims.lhs_ragged_dimensions[0]
    groups = 3
    sizes = jnp.stack(
        [group_sizes(rng, lhs_shape[ragged], groups, kind) for _ in range(int(np.prod(prefix)))]
    ).reshape(*prefix, groups)
    if spec == "bmk,bkn->bmn":
        sizes = jnp.asarray([2, 0, 3], jnp.int32)
    return random_array(rng, lhs_shape, dtype), random_array(rng, rhs_shape, dtype), sizes


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("kind", ["random", "all_in_one", "trailing"])
@pytest.mark.parametrize("name", CASES)
def test_every_mode_matches_lax_and_dense_reference(name, kind, dtype):
    case = CASES[name]
    lhs, rhs, sizes = case_operands(case, kind, dtype)
    dims = case[2]
    actual = jaxmm.ragged_dot_general(lhs, rhs, sizes, dims)
    assert_close(actual, lax.ragged_dot_general(lhs, rhs, sizes, dims), "value vs lax")
    with jax.enable_x64(True):
        reference = dense_reference(case[4], dims, case[0])
        assert_same_derivatives(
            lambda l, r: jaxmm.ragged_dot_general(l, r, sizes, dims),
            lambda l, r: reference(l, r, sizes),
            lhs,
            rhs,
        )


@pytest.mark.parametrize("kind", ["random", "all_in_one", "trailing"])
@pytest.mark.parametrize("groups", [1, 5])
def test_ragged_dot_derivatives_match_lax(groups, kind):
    rng = np.random.default_rng(groups)
    x, w = random_array(rng, (37, 6), jnp.float32), random_array(rng, (groups, 6, 5), jnp.float32)
    sizes = group_sizes(rng, 37, groups, kind)
    assert_same_derivatives(
        lambda a, b: jaxmm.ragged_dot(a, b, sizes), lambda a, b: lax.ragged_dot(a, b, sizes), x, w
    )


@pytest.mark.parametrize(
    "dtype, preferred, precision",
    [
        (jnp.bfloat16, None, None),
        (jnp.bfloat16, jnp.float32, None),
        (jnp.float32, None, lax.Precision.HIGHEST),
        (jnp.float32, None, "bfloat16"),
    ],
    ids=str,
)
def test_ragged_dot_dtypes_and_precision_match_lax(dtype, preferred, precision):
    rng = np.random.default_rng(2)
    x, w = random_array(rng, (300, 16), dtype), random_array(rng, (4, 16, 8), dtype)
    sizes = jnp.asarray([100, 0, 131, 50], jnp.int32)
    options = dict(precision=precision, preferred_element_type=preferred)
    check_vjp(
        lambda a, b: jaxmm.ragged_dot(a, b, sizes, **options),
        lambda a, b: lax.ragged_dot(a, b, sizes, **options),
        x,
        w,
        modes=("jit",),
    )


def test_empty_groups_and_rows_past_the_groups_get_exact_zeros():
    rng = np.random.default_rng(3)
    x, w = random_array(rng, (40, 6), jnp.float32), random_array(rng, (4, 6, 5), jnp.float32)
    sizes = jnp.asarray([10, 0, 20, 0], jnp.int32)  # rows 30..39 are in no group
    out, vjp = jax.vjp(lambda a, b: jaxmm.ragged_dot(a, b, sizes), x, w)
    dx, dw = vjp(random_array(rng, out.shape, jnp.float32))
    assert not np.any(out[30:]) and not np.any(dx[30:])
    assert not np.any(dw[1]) and not np.any(dw[3])
    assert np.all(np.any(dw[0] != 0, axis=-1)) and np.all(np.any(dw[2] != 0, axis=-1))
    dims = Dims((([0], [0]), ([], [])), [0], [])  # the contracting mode's empty groups
    out = jaxmm.ragged_dot_general(x, x, sizes, dims)
    assert not np.any(out[1]) and not np.any(out[3])


OPERANDS = ("lhs", "rhs", "sizes")
VMAP_OPERANDS = ["+".join(s) for n in (1, 2, 3) for s in itertools.combinations(OPERANDS, n)]


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("mapped_names", VMAP_OPERANDS)
@pytest.mark.parametrize("name", ["rows", "contracting"])
def test_vmap_of_any_operands_matches_the_reference(name, mapped_names, axis):
    """Leading (or second) axes of any set of operands, lax's own limit being all three at 0."""
    case = CASES[name]
    mapped = [OPERANDS.index(o) for o in mapped_names.split("+")]
    size = 3
    batches = [case_operands(case, seed=i) for i in range(size)]
    args = [
        jnp.stack([b[i] for b in batches], axis=axis) if i in mapped else batches[0][i]
        for i in range(3)
    ]
    in_axes = tuple(axis if i in mapped else None for i in range(3))
    dims = case[2]
    with jax.enable_x64(True):
        reference = dense_reference(case[4], dims, case[0])
        fn = jax.vmap(partial(jaxmm.ragged_dot_general, ragged_dot_dimension_numbers=dims), in_axes)
        ref = jax.vmap(reference, in_axes)
        sizes = args[2]
        assert_same_derivatives(
            lambda l, r: fn(l, r, sizes), lambda l, r: ref(l, r, sizes), args[0], args[1]
        )


@pytest.mark.parametrize("name", ["rows_batch_outer_inner", "contracting_batch"])
def test_second_order_matches_the_reference(name):
    case = CASES[name]
    lhs, rhs, sizes = case_operands(case)
    dims = case[2]
    with jax.enable_x64(True):
        reference = dense_reference(case[4], dims, case[0])

        def loss(product):
            return lambda l, r: jnp.sum(jnp.sin(product(l, r, sizes)))

        grad = jax.grad(
            loss(partial(jaxmm.ragged_dot_general, ragged_dot_dimension_numbers=dims)), (0, 1)
        )
        grad_ref = jax.grad(loss(reference), (0, 1))
        assert_same_derivatives(grad, grad_ref, lhs, rhs)


@pytest.mark.full
@pytest.mark.parametrize("name", ["rows", "contracting"])
def test_hessian_matches_the_reference(name):
    case = CASES[name]
    lhs, rhs, sizes = case_operands(case)
    dims = case[2]
    with jax.enable_x64(True):
        reference = dense_reference(case[4], dims, case[0])

        def loss(product):
            return lambda l: jnp.sum(jnp.sin(product(l, rhs, sizes)))

        ours = partial(jaxmm.ragged_dot_general, ragged_dot_dimension_numbers=dims)
        assert_close(jax.hessian(loss(ours))(lhs), jax.hessian(loss(reference))(lhs), "hessian")


@pytest.mark.parametrize(
    "rows", [129, *(pytest.param(r, marks=pytest.mark.full) for r in (1, 127, 128, 700))]
)
def test_cpu_tiles_match_the_native_formulation(rows):
    """The CPU loop over tiles and lax.ragged_dot_general (GPU/TPU) on the canonical layouts:
    groups ending inside, at and across tile boundaries, several row blocks."""
    rng = np.random.default_rng(rows)
    groups = 6
    sizes = jnp.stack([group_sizes(rng, rows, groups, "random") for _ in range(4)]).reshape(
        2, 2, -1
    )
    params = dict(precision=None, preferred_element_type=None)
    for mode, rhs_shape in [("rows", (2, groups, 5, 3)), ("contracting", (2, 2, rows, 3))]:
        lhs = random_array(rng, (2, 2, rows, 5), jnp.float32)
        rhs = random_array(rng, rhs_shape, jnp.float32)
        tiled = jax.jit(partial(_ragged_tiles.tiled, mode=mode, **params))(lhs, rhs, sizes)
        assert_close(tiled, _ragged_tiles.native(lhs, rhs, sizes, mode=mode, **params), mode)


def test_cpu_program_has_no_group_fold_dense_product():
    """value_and_grad on CPU: every dot is one tile's (or the dense dW's per-tile) product, none
    of the g masked copies lax's CPU lowering multiplies; and a quarter of lax's temp memory."""
    if jax.default_backend() != "cpu":
        pytest.skip("the loop over tiles is the CPU lowering; GPU and TPU use their ragged kernel")
    m, k, n, groups = 1024, 64, 64, 8
    rng = np.random.default_rng(4)
    x, w = random_array(rng, (m, k), jnp.float32), random_array(rng, (groups, k, n), jnp.float32)
    sizes = group_sizes(rng, m, groups, "random")

    def compiled(product):
        step = jax.value_and_grad(lambda a, b: jnp.sum(product(a, b, sizes) ** 2), (0, 1))
        return jax.jit(step).lower(x, w).compile()

    ours, theirs = compiled(jaxmm.ragged_dot), compiled(lax.ragged_dot)
    tile = _ragged_tiles.TILE_ROWS
    for shape in re.findall(r"= f32\[([\d,]+)\][^=]* dot\(", ours.as_text()):
        elements = np.prod([int(d) for d in shape.split(",")])
        assert elements <= max(tile * max(k, n), k * n), shape
    temp = ours.memory_analysis().temp_size_in_bytes
    assert temp <= 0.25 * theirs.memory_analysis().temp_size_in_bytes


ERROR_CASES = [
    ((8, 4), (3, 4, 5), (3,), jnp.float32, RAGGED_DOT),  # float group sizes
    ((8, 4), (3, 4, 5), (2,), jnp.int32, RAGGED_DOT),  # g differs from rhs's group axis
    ((8, 4), (3, 5, 5), (3,), jnp.int32, RAGGED_DOT),  # k differs
    ((8, 4), (3, 4, 5), (2, 3), jnp.int32, RAGGED_DOT),  # group sizes of the wrong shape
    ((8, 4), (3, 4, 5), (3,), jnp.int32, Dims((([1], [1]), ([], [])), [0], [])),  # no group axis
    ((8, 4), (3, 4, 5), (3,), jnp.int32, Dims((([1], [1]), ([], [])), [2], [0])),  # bad ragged
    ((8, 4), (4, 5), (3,), jnp.int32, Dims((([1], [0]), ([], [])), [1], [0])),  # contracting+group
]


@pytest.mark.parametrize("lhs_shape, rhs_shape, sizes_shape, sizes_dtype, dims", ERROR_CASES)
def test_errors_are_lax_errors(lhs_shape, rhs_shape, sizes_shape, sizes_dtype, dims):
    args = (jnp.ones(lhs_shape), jnp.ones(rhs_shape), jnp.ones(sizes_shape, sizes_dtype))
    expected = raised_by(lax.ragged_dot_general, *args, dims)
    assert raised_by(jaxmm.ragged_dot_general, *args, dims) is expected
    traced = raised_by(
        jax.jit(partial(jaxmm.ragged_dot_general, ragged_dot_dimension_numbers=dims)), *args
    )
    assert traced is expected


def test_group_offset_is_not_implemented_as_in_lax():
    x, w, sizes = jnp.ones((8, 4)), jnp.ones((3, 4, 5)), jnp.asarray([2, 2, 2])
    with pytest.raises(NotImplementedError, match="group_offset"):
        jaxmm.ragged_dot(x, w, sizes, group_offset=jnp.asarray([1]))


def test_group_sizes_get_no_cotangent():
    x, w, sizes = jnp.ones((8, 4)), jnp.ones((3, 4, 5)), jnp.asarray([2, 2, 2])
    _, vjp = jax.vjp(jaxmm.ragged_dot, x, w, sizes)
    assert vjp(jnp.ones((8, 5)))[2].dtype == jax.dtypes.float0
    check_jvp(lambda a: jaxmm.ragged_dot(a, w, sizes), lambda a: lax.ragged_dot(a, w, sizes), x)


@pytest.mark.full  # the same functions and checks as test_ragged_dot_derivatives_match_lax
def test_python_m_jaxmm_self_check_passes():
    from jaxmm import _selfcheck

    cases = [c for c in _selfcheck.cases() if c.name in _selfcheck.RAGGED]
    assert {c.transform for c in cases} == {"vjp", "vmap", "grad", "jvp"}
    assert [_selfcheck.run_case(c) for c in cases] == [None] * len(cases)


@pytest.mark.full
def test_moe_example_trains_like_the_lax_layer():
    pytest.importorskip("flax")
    pytest.importorskip("optax")
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "examples" / "moe_ragged.py"
    spec = importlib.util.spec_from_file_location("moe_ragged", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    data = example.batches(20, 256, 32)
    ours = example.train(jaxmm.ragged_dot, d=32, hidden=64, data=data)
    theirs = example.train(lax.ragged_dot, d=32, hidden=64, data=data)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)  # the same curve, to float32 rounding
    assert ours[-1] < 0.8 * ours[0]  # it really trained


def test_docs_example_runs():
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "ragged_dot.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "docs/ragged_dot.md", "exec"), {})
