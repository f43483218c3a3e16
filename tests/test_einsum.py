"""jaxmm.einsum against jax.vjp of jnp.einsum: two operands, any number, one; booleans, traces and
diagonals; the contraction order of every optimize= value; bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import ALL_DTYPES, EINSUM_CASES, MANY_CASES, SINGLE_AND_REPEATED
from reference import (
    assert_close,
    assert_same_derivatives,
    assert_same_vjp,
    primitive_names,
    raised_by,
    random_array,
    sub_jaxprs,
    x64_context,
)

import jaxmm
from jaxmm.testing import check_structure


@pytest.mark.parametrize(
    "dtype", [jnp.float32, jnp.bfloat16, jnp.complex128, jnp.int32], ids=lambda d: np.dtype(d).name
)
@pytest.mark.parametrize("subscripts, a_shape, b_shape", EINSUM_CASES, ids=str)
def test_einsum_matches_jnp_einsum(mechanism, subscripts, a_shape, b_shape, dtype):
    rng = np.random.default_rng(0)
    with x64_context(dtype):
        a, b = random_array(rng, a_shape, dtype), random_array(rng, b_shape, dtype)
        assert_same_derivatives(
            lambda a, b: mechanism.einsum(subscripts, a, b),
            lambda a, b: jnp.einsum(subscripts, a, b),
            a,
            b,
        )


def test_einsum_contracts_through_the_custom_rule():
    jaxpr = jax.make_jaxpr(lambda a, b: jaxmm.einsum("bij,bjk->bik", a, b))(
        jnp.ones((2, 3, 4)), jnp.ones((2, 4, 5))
    )
    assert "jaxmm_dot_general" in str(jaxpr)


@pytest.mark.parametrize(
    "subscripts, shapes",
    [("ij,jk->ik", [(3, 4), (4, 5)]), ("ijk,jl,lm->im", [(3, 4, 2), (4, 5), (5, 2)])],
    ids=str,
)
def test_einsum_preferred_element_type_and_precision(mechanism, subscripts, shapes):
    rng = np.random.default_rng(1)
    operands = [random_array(rng, shape, jnp.bfloat16) for shape in shapes]
    kwargs = dict(precision="highest", preferred_element_type=jnp.float32)
    assert_same_derivatives(
        lambda *ops: mechanism.einsum(subscripts, *ops, **kwargs),
        lambda *ops: jnp.einsum(subscripts, *ops, **kwargs),
        *operands,
    )


def test_einsum_residual_dtype_reaches_every_product():
    operands = [jnp.ones(s) for s in [(2, 3), (3, 4), (4, 5)]]
    _, vjp = jax.vjp(
        lambda *ops: jaxmm.einsum("ij,jk,kl->il", *ops, residual_dtype=jnp.bfloat16), *operands
    )
    saved = [x for x in jax.tree.leaves(vjp) if x.size and x.ndim == 2]
    assert len(saved) == 4 and {x.dtype for x in saved} == {jnp.dtype(jnp.bfloat16)}


def test_backward_of_A_B_to_C_is_C_B_to_A():
    """The mnemonic, checked: d/da of 'A,B->C' is einsum('C,B->A', dY, b)."""
    rng = np.random.default_rng(2)
    a, b = random_array(rng, (2, 3, 4), jnp.float32), random_array(rng, (2, 4, 5), jnp.float32)
    y, vjp = jax.vjp(lambda a, b: jaxmm.einsum("bij,bjk->bik", a, b), a, b)
    dy = random_array(rng, y.shape, jnp.float32)
    da, db = vjp(dy)
    np.testing.assert_allclose(da, jnp.einsum("bik,bjk->bij", dy, b), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(db, jnp.einsum("bij,bik->bjk", a, dy), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", MANY_CASES, ids=str)
def test_einsum_of_many_operands_matches_jnp(mechanism, case):
    subscripts, *shapes = case
    rng = np.random.default_rng(0)
    operands = [random_array(rng, shape, jnp.float32) for shape in shapes]
    assert_same_derivatives(
        lambda *ops: mechanism.einsum(subscripts, *ops),
        lambda *ops: jnp.einsum(subscripts, *ops),
        *operands,
    )


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: np.dtype(d).name)
def test_einsum_of_three_operands_every_dtype(mechanism, dtype):
    rng = np.random.default_rng(1)
    with x64_context(dtype):
        operands = [random_array(rng, s, dtype) for s in [(2, 3, 4), (2, 5, 4), (2, 5, 6)]]
        assert_same_derivatives(
            lambda *ops: mechanism.einsum("bqd,bkd,bkv->bqv", *ops),
            lambda *ops: jnp.einsum("bqd,bkd,bkv->bqv", *ops),
            *operands,
        )


@pytest.mark.parametrize("case", SINGLE_AND_REPEATED, ids=str)
def test_einsum_of_one_operand_and_repeated_letters_matches_jnp(mechanism, case):
    subscripts, *shapes = case
    rng = np.random.default_rng(2)
    with x64_context(jnp.complex128):
        operands = [random_array(rng, shape, jnp.complex128) for shape in shapes]
        assert_same_derivatives(
            lambda *ops: mechanism.einsum(subscripts, *ops),
            lambda *ops: jnp.einsum(subscripts, *ops),
            *operands,
        )


@pytest.mark.parametrize(
    "case",
    [
        ("ba,b->", (3, 4), (3,)),  # 'a' summed within the first operand: a logical or
        ("ba,b->a", (3, 4), (3,)),
        ("ij,jk,kl->il", (2, 3), (3, 4), (4, 2)),
        ("ii->", (3, 3)),
        ("ij->i", (3, 4)),
    ],
    ids=str,
)
def test_einsum_of_booleans_is_boolean_like_jnp(mechanism, case):
    subscripts, *shapes = case
    rng = np.random.default_rng(3)
    operands = [random_array(rng, shape, jnp.bool_) for shape in shapes]
    ours = mechanism.einsum(subscripts, *operands)
    assert ours.dtype == jnp.bool_
    np.testing.assert_array_equal(ours, jnp.einsum(subscripts, *operands))


def test_einsum_mixed_dtypes_sum_in_the_result_dtype_like_jnp(mechanism):
    # int8 values summed within their operand would overflow in int8; jnp sums in float32.
    a = jnp.full((3, 200), 100, jnp.int8)
    b = jnp.ones((3,), jnp.float32)
    for subscripts in ["ij,i->", "ij,i->i"]:
        assert_same_derivatives(
            lambda b: mechanism.einsum(subscripts, a, b), lambda b: jnp.einsum(subscripts, a, b), b
        )


def _dot_shapes(fn, *operands):
    """The output shape of each dot_general in the jaxpr of ``fn``, in order (sorted dims, since
    each implementation may lay an intermediate's axes out in its own order)."""
    jaxpr = jax.make_jaxpr(fn)(*operands)
    shapes = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("dot_general", "jaxmm_dot_general"):
                shapes.append(tuple(sorted(eqn.outvars[0].aval.shape)))
            for sub in sub_jaxprs(eqn.params):
                walk(sub)

    walk(jaxpr.jaxpr)
    return shapes


CHAIN = ("ij,jk,kl,lm->im", [(64, 2), (2, 32), (32, 3), (3, 16)])


@pytest.mark.parametrize(
    "optimize",
    ["auto", True, False, "greedy", "optimal", "dp", "branch-2", [(2, 3), (0, 1), (0, 1)]],
    ids=str,
)
def test_einsum_contracts_in_jnps_order_for_every_optimize(optimize):
    subscripts, shapes = CHAIN
    rng = np.random.default_rng(4)
    operands = [random_array(rng, shape, jnp.float32) for shape in shapes]
    ours = lambda *ops: jaxmm.einsum(subscripts, *ops, optimize=optimize)
    theirs = lambda *ops: jnp.einsum(subscripts, *ops, optimize=optimize)
    assert _dot_shapes(ours, *operands) == _dot_shapes(theirs, *operands)
    assert_same_derivatives(ours, theirs, *operands)


def test_einsum_takes_the_path_einsum_path_returns():
    subscripts, shapes = CHAIN
    operands = [jnp.ones(shape) for shape in shapes]
    path, _ = jnp.einsum_path(subscripts, *operands, optimize="greedy")
    ours = lambda *ops: jaxmm.einsum(subscripts, *ops, optimize=path)
    theirs = lambda *ops: jnp.einsum(subscripts, *ops, optimize=path)
    assert _dot_shapes(ours, *operands) == _dot_shapes(theirs, *operands)
    np.testing.assert_array_equal(
        jaxmm.einsum(subscripts, *operands, optimize=["einsum_path", *path]), theirs(*operands)
    )


def test_every_pairwise_contraction_is_the_custom_rule():
    operands = [jnp.ones(s) for s in [(2, 3), (3, 4), (4, 5), (5, 2)]]
    jaxpr = jax.make_jaxpr(lambda *ops: jaxmm.einsum("ij,jk,kl,lm->im", *ops))(*operands)
    names = primitive_names(jaxpr.jaxpr)
    assert names.count("jaxmm_dot_general") == 3
    top_level = [eqn.primitive.name for eqn in jaxpr.jaxpr.eqns]
    assert "dot_general" not in top_level


@pytest.mark.parametrize(
    "subscripts, shapes",
    [
        ("ij,jk,kl->il", [(8, 16), (16, 4), (4, 32)]),
        ("bqd,bkd,bkv->bqv", [(2, 8, 16), (2, 8, 16), (2, 8, 16)]),
        ("ii,ij->j", [(8, 8), (8, 4)]),
    ],
    ids=str,
)
def test_compiled_gradient_has_jnps_dots_and_flops(subscripts, shapes):
    operands = [jnp.ones(shape) for shape in shapes]
    check_structure(
        lambda *ops: jaxmm.einsum(subscripts, *ops),
        lambda *ops: jnp.einsum(subscripts, *ops),
        *operands,
    )


def test_einsum_of_many_operands_under_jit_vmap_and_hessian(mechanism):
    rng = np.random.default_rng(5)
    shapes = [(2, 2, 3), (3, 2), (2, 2)]
    operands = [random_array(rng, (2, *s), jnp.float32) for s in shapes]
    fn = lambda einsum: lambda *ops: einsum("bij,jk,kl->bil", *ops)
    assert_same_derivatives(jax.vmap(fn(mechanism.einsum)), jax.vmap(fn(jnp.einsum)), *operands)
    loss = lambda einsum: lambda *ops: jnp.sum(jnp.sin(fn(einsum)(*ops)))
    first = [op[0] for op in operands]
    jax.tree.map(
        assert_close,
        jax.jit(jax.hessian(loss(mechanism.einsum), argnums=(0, 2)))(*first),
        jax.jit(jax.hessian(loss(jnp.einsum), argnums=(0, 2)))(*first),
    )


def test_einsum_signature_is_jnps_plus_the_residual_options():
    import inspect

    ours = dict(inspect.signature(jaxmm.einsum).parameters)
    theirs = inspect.signature(jnp.einsum).parameters
    if "reduction_order" not in theirs:  # JAX before 0.12.1
        del ours["reduction_order"]
    assert list(ours) == [p for p in theirs if p != "_dot_general"] + [
        "residual_dtype",
        "residual_scaling",
    ]
    for name, p in theirs.items():
        if name != "_dot_general":
            assert (ours[name].kind, ours[name].default) == (p.kind, p.default), name


@pytest.mark.parametrize(
    "subscripts, shapes, fragments",
    [
        ("ij,jk->ik", [(2, 3), (4, 5)], ["'j'", "size 3", "(2, 3)", "(4, 5)"]),
        ("ij,jk,kl->il", [(2, 3), (3, 4)], ["3 operand", "2 were given"]),
        ("ij", [], ["1 operand", "0 were given"]),
        ("ij,jk->iz", [(2, 3), (3, 4)], ["'z'"]),
        ("ijk,jk->i", [(2, 3), (3, 4)], ["rank 2", "'ijk'"]),
        ("ij,jk->ikk", [(2, 3), (3, 4)], ["'k'", "more than once"]),
        ("ii->i", [(3, 4)], ["'i'", "(3, 4)", "sizes 3 and 4"]),
        ("ij,jk,kl->il", [(2, 3), (3, 4), (5, 6)], ["'k'", "(3, 4)", "(5, 6)"]),
    ],
    ids=str,
)
def test_einsum_refuses_bad_input_like_jnp(mechanism, subscripts, shapes, fragments):
    operands = [jnp.ones(shape) for shape in shapes]
    expected = raised_by(jnp.einsum, subscripts, *operands)
    with pytest.raises(expected) as error:
        mechanism.einsum(subscripts, *operands)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_einsum_refuses_what_jnp_refuses_too(mechanism):
    with pytest.raises(NotImplementedError):
        mechanism.einsum("ij->ji", jnp.ones((2, 2)), out=jnp.ones((2, 2)))
    # Not a string: the operand/sublist form, whose malformed lists get jnp's own errors.
    for malformed in [(3, jnp.ones(2)), (jnp.ones((2, 2)), ["a", 1]), (jnp.ones(2), [[0]])]:
        with pytest.raises(TypeError) as theirs:
            jnp.einsum(*malformed)
        with pytest.raises(TypeError) as ours:
            mechanism.einsum(*malformed)
        assert str(ours.value) == str(theirs.value)
    with pytest.raises(TypeError, match="list"):
        mechanism.einsum("i,i->", [1.0, 2.0], jnp.ones(2))
    # A path that contracts three operands at once: jnp.einsum's NotImplementedError.
    three = (jnp.ones((2, 3)), jnp.ones((3, 4)), jnp.ones((4, 5)))
    for einsum in (jnp.einsum, mechanism.einsum):
        with pytest.raises(NotImplementedError, match="3"):
            einsum("ij,jk,kl->il", *three, optimize=[(0, 1, 2)])


try:  # a bare GPU image (scripts/gpu_report.sh) may lack hypothesis: the tables above still run
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:
    st = None

if st is not None:

    @st.composite
    def einsum_specs(draw):
        """Two to four operands over a pool of letters (with sizes 1-3), each operand a random
        subset in random order, sometimes a letter repeated within one operand; the output a random
        subset of the letters used."""
        pool = "abcdef"
        sizes = {c: draw(st.integers(1, 3)) for c in pool}
        terms = []
        for _ in range(draw(st.integers(2, 4))):
            letters = draw(st.lists(st.sampled_from(pool), min_size=0, max_size=3, unique=True))
            if letters and draw(st.integers(0, 5)) == 0:  # a diagonal
                letters.append(letters[0])
            terms.append("".join(draw(st.permutations(letters))))
        used = sorted(set("".join(terms)))
        output = draw(st.lists(st.sampled_from(used), unique=True)) if used else []
        subscripts = ",".join(terms) + "->" + "".join(output)
        shapes = [tuple(sizes[c] for c in term) for term in terms]
        return subscripts, shapes

    @settings(max_examples=15)
    @given(
        spec=einsum_specs(),
        dtype=st.sampled_from([jnp.float32, jnp.complex64, jnp.int32, jnp.bool_]),
        seed=st.integers(0, 2**16),
    )
    def test_einsum_property(spec, dtype, seed):
        subscripts, shapes = spec
        rng = np.random.default_rng(seed)
        operands = [random_array(rng, shape, dtype) for shape in shapes]
        assert_same_vjp(
            lambda *ops: jaxmm.einsum(subscripts, *ops),
            lambda *ops: jnp.einsum(subscripts, *ops),
            *operands,
            seed=seed,
        )
