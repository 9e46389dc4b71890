"""Clinical inputs (age, sex, site): what counts as missing, how a value is read, what is valid.

One module for the case tables (``model_zoo.cases``), the Case page and inference
(``model_zoo.ensemble.clinical_vector``), so a value accepted in one place is read the same
way in the others. Needs no pandas: inference imports it on every prediction path.
"""

from __future__ import annotations

import math
from decimal import Decimal
from numbers import Number
from typing import Any

import numpy as np

from model_zoo.errors import InputError

__all__ = [
    "SITES",
    "cell_text",
    "is_missing",
    "parse_age",
    "parse_number",
    "parse_sex",
    "parse_site",
    "validate_clinical",
]

SITES = ("appendicular", "axial")
AGE_RANGE_YEARS = (0.0, 120.0)

# pandas' missing markers (pd.NA, pd.NaT), recognised by their type's name so that this module
# never imports pandas (the types' __module__ differs between pandas versions).
_PANDAS_MISSING_TYPES = frozenset({"NAType", "NaTType"})


def is_missing(value: Any) -> bool:
    """None, pd.NA, NaN of any float type (incl. numpy float32), NaT, or a blank string."""
    if value is None:
        return True
    kind = type(value)
    if kind.__name__ in _PANDAS_MISSING_TYPES and kind.__module__.split(".")[0] == "pandas":
        return True
    if isinstance(value, str):
        return value.strip() == ""
    if isinstance(value, np.ndarray):
        # arrays are values, not "missing"; a 0-d array is its one element
        return value.ndim == 0 and is_missing(value.item())
    if isinstance(value, (float, np.floating)):
        return math.isnan(value)
    if isinstance(value, (complex, np.complexfloating)):
        return math.isnan(value.real) or math.isnan(value.imag)
    if isinstance(value, (np.datetime64, np.timedelta64)):
        return bool(np.isnat(value))
    if isinstance(value, Decimal):
        return value.is_nan()
    return False


def cell_text(value: Any) -> str:
    """How a raw cell is quoted in messages ('48', not 48.0 for an int-typed column)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def parse_number(value: Any, name: str) -> float | None:
    """A number from a cell (None when missing); InputError naming ``name`` otherwise."""
    if is_missing(value):
        return None
    if isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name} '{value}' is not a number")
    if isinstance(value, Number):
        return float(value)  # type: ignore[arg-type]
    try:
        return float(str(value).strip())
    except ValueError:
        raise InputError(f"{name} '{cell_text(value)}' is not a number") from None


def parse_age(value: Any) -> float | None:
    """Age in years (0-120 inclusive) or None when missing."""
    age = parse_number(value, "age")
    if age is None or math.isnan(age):
        return None
    low, high = AGE_RANGE_YEARS
    if not low <= age <= high:
        raise InputError(f"age '{cell_text(value)}' is outside 0-120 years")
    return age


def parse_sex(value: Any) -> str | None:
    """``"M"``/``"F"`` (``male``/``female`` accepted, any case) or None when missing."""
    if is_missing(value):
        return None
    s = str(value).strip().lower()
    if s in ("m", "male"):
        return "M"
    if s in ("f", "female"):
        return "F"
    raise InputError(f"sex '{cell_text(value)}' is not M or F")


def parse_site(value: Any) -> str | None:
    """``"appendicular"``/``"axial"`` (any case) or None when missing."""
    if is_missing(value):
        return None
    s = str(value).strip().lower()
    if s in SITES:
        return s
    raise InputError(f"site '{cell_text(value)}' is not appendicular or axial")


def validate_clinical(age: Any, sex: Any, site: Any) -> tuple[float | None, str | None, str | None]:
    """Normalise one case's clinical values; missing values (None, NaN, '') become None.

    Returns
    -------
    (age, sex, site)
        age in years as float (0-120 inclusive), sex ``"M"``/``"F"`` (``male``/``female``
        accepted, any case), site ``"appendicular"``/``"axial"`` (any case).

    Raises
    ------
    InputError
        For the first bad value, with a message naming it, e.g. ``age 'abc' is not a number``.
    """
    return parse_age(age), parse_sex(sex), parse_site(site)
