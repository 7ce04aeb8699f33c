"""Reading params.yaml with validation that names the offending key.

Stages read values through :class:`Params` accessors (``p.number("train.lr_head", low=0)``) rather
than indexing dicts, so a typo or a bad value stops the stage with a message such as
``params.yaml: 'split.ratios' must sum to 1, got 0.9`` instead of a ``KeyError`` deep in the code.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from emorec.errors import ParamsError

_MISSING = object()


def _exponent_float(value: Any) -> Any:
    """``"1e-05"`` as the float it means: YAML 1.1 (PyYAML) reads exponents without a dot as
    strings, and ``dvc exp run -S train.min_lr=1e-5`` writes exactly that into params.yaml."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


class Params:
    """Validated, dotted-key access to the parameter tree."""

    def __init__(self, raw: dict[str, Any]):
        if not isinstance(raw, dict):
            raise ParamsError("<root>", "must be a mapping of sections")
        self.raw = raw

    # -- generic access -------------------------------------------------------------------------
    def get(self, key: str, default: Any = _MISSING) -> Any:
        node: Any = self.raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                if default is not _MISSING:
                    return default
                raise ParamsError(key, "is missing")
            node = node[part]
        return node

    def section(self, key: str) -> Params:
        value = self.get(key)
        if not isinstance(value, dict):
            raise ParamsError(key, f"must be a mapping, got {type(value).__name__}")
        return Params(value) if key == "" else _Scoped(value, key)

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.raw)

    def _name(self, key: str) -> str:
        return key

    def _fail(self, key: str, problem: str) -> ParamsError:
        return ParamsError(self._name(key), problem)

    # -- typed accessors -----------------------------------------------------------------------
    def number(self, key: str, low: float | None = None, high: float | None = None,
               default: Any = _MISSING) -> float:
        value = _exponent_float(self.get(key, default))
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._fail(key, f"must be a number, got {value!r}")
        if low is not None and value < low:
            raise self._fail(key, f"must be >= {low}, got {value}")
        if high is not None and value > high:
            raise self._fail(key, f"must be <= {high}, got {value}")
        return float(value)

    def integer(self, key: str, low: int | None = None, high: int | None = None,
                default: Any = _MISSING) -> int:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, f"must be an integer, got {value!r}")
        if low is not None and value < low:
            raise self._fail(key, f"must be >= {low}, got {value}")
        if high is not None and value > high:
            raise self._fail(key, f"must be <= {high}, got {value}")
        return value

    def boolean(self, key: str, default: Any = _MISSING) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, f"must be true or false, got {value!r}")
        return value

    def string(self, key: str, default: Any = _MISSING) -> str:
        value = self.get(key, default)
        if not isinstance(value, str) or not value:
            raise self._fail(key, f"must be a non-empty string, got {value!r}")
        return value

    def choice(self, key: str, options: Iterable[str], default: Any = _MISSING) -> str:
        value = self.get(key, default)
        options = list(options)
        if value not in options:
            raise self._fail(key, f"must be one of {options}, got {value!r}")
        return value

    def mapping(self, key: str, default: Any = _MISSING) -> dict[str, Any]:
        value = self.get(key, default)
        if not isinstance(value, dict):
            raise self._fail(key, f"must be a mapping, got {value!r}")
        return value

    def sequence(self, key: str, default: Any = _MISSING) -> list[Any]:
        value = self.get(key, default)
        if not isinstance(value, list):
            raise self._fail(key, f"must be a list, got {value!r}")
        return value

    def existing_path(self, key: str, kind: str = "any") -> Path:
        """A path that must exist (``kind`` is ``file``, ``dir`` or ``any``)."""
        path = Path(self.string(key))
        ok = {"file": path.is_file, "dir": path.is_dir, "any": path.exists}[kind]()
        if not ok:
            what = {"file": "file", "dir": "folder", "any": "path"}[kind]
            raise self._fail(key, f"points to a {what} that does not exist: {path}")
        return path

    # -- project-wide values -------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        classes = self.sequence("classes")
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise self._fail("classes", f"must list at least two distinct names, got {classes}")
        return [str(c) for c in classes]

    @property
    def seed(self) -> int:
        return self.integer("seed")


class _Scoped(Params):
    """A sub-section whose error messages still carry the full dotted key."""

    def __init__(self, raw: dict[str, Any], prefix: str):
        super().__init__(raw)
        self.prefix = prefix

    def _name(self, key: str) -> str:
        return f"{self.prefix}.{key}"

    def get(self, key: str, default: Any = _MISSING) -> Any:
        try:
            return super().get(key, default)
        except ParamsError as err:
            raise ParamsError(self._name(key), "is missing") from err

    def section(self, key: str) -> Params:
        value = self.get(key)
        if not isinstance(value, dict):
            raise self._fail(key, f"must be a mapping, got {type(value).__name__}")
        return _Scoped(value, self._name(key))


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and parse the parameter file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError("<file>", f"not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError("<file>", f"is not valid YAML: {err}") from err
    return Params(raw or {})
