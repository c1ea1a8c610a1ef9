"""Property tests: whatever a user writes, the loader answers with a Spec or a SpecError.

Random layer stacks (nested in repeat and residual) either infer shapes or fail with a
SpecError; random edits of the example files never raise anything but SpecError, and
every issue carries a line number.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convspec.specs import LAYER_TYPES, SpecError, load_spec_text
from convspec.specs.yamlio import dump_yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = {p.name: p.read_text("utf-8") for p in sorted((REPO / "examples").glob("*.yaml"))}
ACTIVATIONS = ["relu", "sigmoid", "tanh", "leaky_relu", "gelu", "silu", "elu", "softmax", "none"]
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------ random layer stacks

small = st.integers(min_value=-1, max_value=6)
int_or_pair = st.one_of(small, st.lists(small, min_size=2, max_size=2))


def leaf_layer() -> st.SearchStrategy[dict]:
    return st.one_of(
        st.fixed_dictionaries(
            {"type": st.just("conv"), "filters": st.integers(-1, 12)},
            optional={
                "kernel": int_or_pair,
                "stride": int_or_pair,
                "dilation": int_or_pair,
                "padding": st.one_of(st.sampled_from(["same", "valid", "full"]), small),
                "groups": st.integers(0, 4),
                "bias": st.booleans(),
                "batch_norm": st.booleans(),
                "activation": st.sampled_from(ACTIVATIONS + ["swish"]),
            },
        ),
        st.fixed_dictionaries(
            {"type": st.sampled_from(["max_pool", "avg_pool"])},
            optional={"size": int_or_pair, "stride": int_or_pair, "padding": small},
        ),
        st.fixed_dictionaries(
            {"type": st.sampled_from(["global_avg_pool", "global_max_pool", "flatten", "batch_norm"])}
        ),
        st.fixed_dictionaries(
            {"type": st.just("dense"), "units": st.integers(-1, 16)},
            optional={"activation": st.sampled_from(ACTIVATIONS), "bias": st.booleans(), "batch_norm": st.booleans()},
        ),
        st.fixed_dictionaries({"type": st.just("dropout")}, optional={"rate": st.floats(-0.5, 1.5, allow_nan=False)}),
        st.fixed_dictionaries({"type": st.just("activation"), "fn": st.sampled_from(ACTIVATIONS)}),
        st.fixed_dictionaries(
            {"type": st.just("backbone"), "name": st.sampled_from(["resnet18", "convnext_atto", "resnet19", ""])},
            optional={
                "trainable": st.one_of(st.booleans(), st.integers(-1, 7)),
                "output": st.sampled_from(["pooled", "features", "map"]),
                "weights": st.sampled_from(["none", "pretrained", "w.safetensors", ""]),
            },
        ),
    )


def with_blocks(children: st.SearchStrategy[list[dict]]) -> st.SearchStrategy[dict]:
    return st.one_of(
        st.fixed_dictionaries({"type": st.just("repeat"), "times": st.integers(0, 3), "layers": children}),
        st.fixed_dictionaries(
            {"type": st.just("residual"), "layers": children}, optional={"activation": st.sampled_from(ACTIVATIONS)}
        ),
    )


layer_lists = st.recursive(
    st.lists(leaf_layer(), min_size=0, max_size=4),
    lambda children: st.lists(st.one_of(leaf_layer(), with_blocks(children)), min_size=1, max_size=4),
    max_leaves=12,
)


def test_strategies_cover_every_layer_type():
    covered = {
        "backbone",
        "conv",
        "max_pool",
        "avg_pool",
        "global_avg_pool",
        "global_max_pool",
        "flatten",
        "batch_norm",
        "dense",
        "dropout",
        "activation",
        "repeat",
        "residual",
    }
    assert covered == set(LAYER_TYPES)


@FUZZ
@given(
    layers=layer_lists,
    channels=st.sampled_from([1, 3]),
    size=st.lists(st.integers(1, 40), min_size=2, max_size=2),
    head=st.booleans(),
)
def test_random_layer_stacks_infer_shapes_or_raise_spec_error(layers, channels, size, head):
    data = {
        "version": 1,
        "task": "multiclass",
        "classes": 4,
        "data": {"source": {"type": "builtin", "name": "digits", "classes": [0, 1, 2, 3]}},
        "input": {"channels": channels, "size": size},
        "model": {"layers": layers, "head": head},
    }
    try:
        spec = load_spec_text(dump_yaml(data), "fuzz.yaml")
    except SpecError as e:
        assert e.issues
        for issue in e.issues:
            assert issue.line is not None and issue.col is not None, str(issue)
        return
    summary = spec.summary()
    assert summary.params >= 0 and summary.macs >= 0
    assert all(r.shape is None or all(d >= 1 for d in r.shape) for r in summary.rows)
    assert summary.output_shape == (4,)  # the head's, or (model.head: false) the last layer's: the logits


# ------------------------------------------------------------- mutated examples

WRONG_VALUES = [
    "[1, 2]",
    "{a: 1}",
    "-3",
    "0",
    "abc",
    "null",
    "1.5",
    "true",
    "''",
    "1e999",
    "[]",
    "{}",
    "&x 1",
    "*y",
    "!!binary AA==",
]


@st.composite
def mutated_example(draw) -> tuple[str, str]:
    name = draw(st.sampled_from(sorted(EXAMPLES)))
    lines = EXAMPLES[name].splitlines()
    for _ in range(draw(st.integers(1, 3))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        kind = draw(st.sampled_from(["delete", "swap", "wrong", "insert", "duplicate"]))
        if kind == "delete":
            del lines[i]
        elif kind == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            a, sep_a, va = lines[i].partition(": ")
            b, sep_b, vb = lines[j].partition(": ")
            if sep_a and sep_b:
                lines[i], lines[j] = a + sep_a + vb, b + sep_b + va
        elif kind == "wrong":
            key, sep, _ = lines[i].partition(": ")
            if sep:
                lines[i] = key + sep + draw(st.sampled_from(WRONG_VALUES))
        elif kind == "insert":
            pos = draw(st.integers(0, len(lines[i])))
            junk = draw(
                st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=4)
            )
            lines[i] = lines[i][:pos] + junk + lines[i][pos:]
        else:
            lines.insert(i, lines[i])
    return name, "\n".join(lines) + "\n"


@FUZZ
@given(mutated_example())
def test_mutated_examples_raise_only_spec_errors_with_lines(case):
    name, text = case
    try:
        load_spec_text(text.encode("utf-8"), name, base_dir=str(REPO / "examples"))
    except SpecError as e:
        assert e.issues
        for issue in e.issues:
            assert issue.line is not None and issue.line >= 1, str(issue)
            assert issue.file == name
            assert str(issue).startswith(f"{name}:{issue.line}:")
