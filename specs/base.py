"""Shared Pydantic building blocks: strict models and the small value types the language uses."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic import Strict as PydanticStrict

from .classes import class_name_problem

Activation = Literal["relu", "sigmoid", "tanh", "leaky_relu", "gelu", "silu", "elu", "softmax", "none"]

# Why strict: in lax mode ``filters: true`` became 1 filter and ``filters: 8.5`` an error but
# ``8.0`` a silent 8; a count must be written as an integer.
# Why a ceiling: counts past int32 overflow torch's and numpy's C integers (a traceback deep in a
# kernel, after the data has loaded); no layer, batch or epoch count comes near it.
MAX_COUNT = 2**31 - 1
PosInt = Annotated[int, PydanticStrict(), Field(gt=0, le=MAX_COUNT)]
NonNegInt = Annotated[int, PydanticStrict(), Field(ge=0, le=MAX_COUNT)]
#: numpy's and scikit-learn's random seeds are 32-bit unsigned.
Seed = Annotated[int, PydanticStrict(), Field(ge=0, le=2**32 - 1)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


def _as_pair(value):
    """Why: Keras users write ``kernel: 3`` and ``kernel: [3, 5]``; both mean (h, w)."""
    if isinstance(value, list) and len(value) != 2:  # not "missing required key 1" for [32]
        raise ValueError(f"expected [height, width], 2 numbers (got {len(value)}: {value})")
    return [value, value] if isinstance(value, int) and not isinstance(value, bool) else value


# Why json_schema_input_type: the JSON Schema must accept what the validator accepts (``size: 32``).
Pair = Annotated[
    tuple[PosInt, PosInt], BeforeValidator(_as_pair, json_schema_input_type=PosInt | tuple[PosInt, PosInt])
]
IntOrPair = Annotated[PosInt | tuple[PosInt, PosInt], Field(union_mode="left_to_right")]


def pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """Normalise an int-or-pair field to ``(h, w)``."""
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))


def _as_name(value):
    """Class names may be written as numbers (``[3, 8]``); they are names all the same."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def _printable_name(name: str) -> str:
    problem = class_name_problem(name)
    if problem:
        raise ValueError(problem)
    return name


ClassName = Annotated[
    str,
    BeforeValidator(_as_name, json_schema_input_type=str | int | float),
    AfterValidator(_printable_name),
    Field(min_length=1),
]


# The one pattern of ``training.device`` and ``--device``; the compiler's placement uses it too.
DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"


class Strict(BaseModel):
    """Base of every spec model: unknown keys are errors.

    Assignments are not validated (``validate_assignment=False``): a Spec is built once from
    YAML and then read, never assigned to. Code that needs a changed spec makes a new one
    (``spec_from_dict`` / ``model_copy``), so a caller's Spec is never mutated.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=False, populate_by_name=True)
