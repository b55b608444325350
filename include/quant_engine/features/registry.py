"""Your own features: declare a feature once and every path runs it, the parity check included.

A user module calls :func:`register_feature` (the arguments of
:class:`~quant_engine.features.definitions.FeatureDefinition`) and :func:`register_feature_set`
(a name and the features it lists, built-in or registered). Ingestion, walk-forward, training and
the bridge resolve a set name through :func:`get_feature_set`,
so a registered set goes everywhere a built-in one does, batch and streaming alike, and
:func:`quant_engine.features.parity.check_parity` (``quant-engine features check``) proves the two
paths agree on each registered feature.

Modules are found two ways, both read once, the first time a set name is resolved (importing the
library registers nothing):

- ``QE_FEATURE_MODULES=mypkg.features,other.mod``: modules imported in that order;
- the ``quant_engine.features`` entry-point group of installed distributions: an entry point naming
  a module is imported, one naming a callable (``mypkg.features:register``) is called.

Errors (a duplicate name, a bad window, a function returning the wrong shape, a set naming an
unknown feature, a module that cannot be imported) are :class:`FeatureRegistrationError`, naming
the module and the feature.

The DAG forms list the registered sets without importing those modules (they would pull numpy and
pandas into every DAG parse): :func:`declared_feature_set_names` reads the modules' source for
``register_feature_set("name", ...)`` calls with a literal name. For the same reason this module
imports only the standard library and the settings; the definitions and numpy load on first use.
"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import importlib.metadata
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from quant_engine.config import FEATURE_MODULES_VARIABLE, feature_modules_from_env

if TYPE_CHECKING:
    from quant_engine.features.definitions import FeatureDefinition, FeatureSet

#: The entry-point group installed distributions declare their feature modules in.
ENTRY_POINT_GROUP = "quant_engine.features"
#: The sets :mod:`quant_engine.features.definitions` defines, by name (a test keeps the two equal),
#: so the DAG forms can list them without importing the definitions.
BUILTIN_FEATURE_SETS: tuple[str, ...] = ("default", "extended", "close_only", "ohlc")
#: The module built-in features are reported from.
BUILTIN_MODULE = "quant_engine.features.definitions"
#: Rows of the probe a feature is run on when registered, to check its shape before any real data.
_PROBE_ROWS = 4


class FeatureRegistrationError(ValueError):
    """A feature or feature set that cannot be registered, or a feature module that cannot be loaded."""


@dataclass(frozen=True)
class RegisteredFeature:
    """A feature and the module that declared it (:data:`BUILTIN_MODULE` for the built-in ones)."""

    definition: FeatureDefinition
    module: str


@dataclass(frozen=True)
class RegisteredFeatureSet:
    """A feature set and the module that declared it."""

    feature_set: FeatureSet
    module: str


class FeatureRegistry:
    """The features and sets users registered in this process, and the discovery of their modules.

    Discovery reads ``QE_FEATURE_MODULES`` when it runs, not when the registry is made, so a
    process that sets the variable before its first lookup is served.
    """

    def __init__(self) -> None:
        self._features: dict[str, RegisteredFeature] = {}
        self._sets: dict[str, RegisteredFeatureSet] = {}
        self._discovered = False
        self._failure: FeatureRegistrationError | None = None

    # --- registration --------------------------------------------------------------------------

    def register_feature(
        self, module: str, name: str, inputs: Sequence[str], window: int, compute: Callable, description: str
    ) -> FeatureDefinition:
        """Check and record a feature declared by ``module``; see the module-level :func:`register_feature`."""
        from quant_engine.features.definitions import BUILTIN_FEATURES, FeatureDefinition

        where = f"{module}: feature {name!r}"
        try:
            definition = FeatureDefinition(name, tuple(inputs), window, compute, description)
        except (TypeError, ValueError) as exc:
            raise FeatureRegistrationError(f"{where}: {exc}") from None
        if name in BUILTIN_FEATURES:
            raise FeatureRegistrationError(f"{where}: the name is a built-in feature's; choose another")
        if name in self._features:
            raise FeatureRegistrationError(
                f"{where}: already registered by {self._features[name].module}; feature names must be unique"
            )
        _probe(definition, where)
        self._features[name] = RegisteredFeature(definition, module)
        return definition

    def register_feature_set(self, module: str, name: str, features: Sequence[str], version: int) -> FeatureSet:
        """Check and record a set declared by ``module``; see the module-level :func:`register_feature_set`."""
        from quant_engine.features.definitions import BUILTIN_FEATURES, FeatureSet

        where = f"{module}: feature set {name!r}"
        if not isinstance(name, str) or not name.isidentifier():
            raise FeatureRegistrationError(f"{where}: the name must be a Python identifier")
        if name in BUILTIN_FEATURE_SETS:
            raise FeatureRegistrationError(f"{where}: the name is a built-in set's; choose another")
        if name in self._sets:
            raise FeatureRegistrationError(f"{where}: already registered by {self._sets[name].module}")
        if isinstance(features, str) or not isinstance(features, Iterable):
            raise FeatureRegistrationError(f"{where}: features must be a list of feature names, got {features!r}")
        known = {**BUILTIN_FEATURES, **{n: r.definition for n, r in self._features.items()}}
        features = list(features)
        unknown = [f for f in features if f not in known]
        if unknown:
            raise FeatureRegistrationError(
                f"{where} names unknown feature(s) {unknown}; register them first (known: {', '.join(known)})"
            )
        try:
            feature_set = FeatureSet(name, version, tuple(known[f] for f in features))
        except (TypeError, ValueError) as exc:
            raise FeatureRegistrationError(f"{where}: {exc}") from None
        self._sets[name] = RegisteredFeatureSet(feature_set, module)
        return feature_set

    # --- discovery and lookup ------------------------------------------------------------------

    def discover(self) -> None:
        """Import the configured modules and load the entry points, once; a failure is raised again on every call."""
        if self._failure is not None:
            raise self._failure
        if self._discovered:
            return
        self._discovered = True
        try:
            for module in feature_modules_from_env():
                _import(module, f"{FEATURE_MODULES_VARIABLE} names {module!r}")
            for entry_point in _entry_points():
                _load(entry_point)
        except FeatureRegistrationError as exc:
            self._failure = exc
            raise

    def feature_sets(self) -> Mapping[str, RegisteredFeatureSet]:
        """The registered sets by name, after discovery."""
        self.discover()
        return dict(self._sets)

    def features(self) -> Mapping[str, RegisteredFeature]:
        """The registered (not built-in) features by name, after discovery."""
        self.discover()
        return dict(self._features)


def _probe(definition: FeatureDefinition, where: str) -> None:
    """Run a new feature on a few plausible bars, so a wrong shape or a crash shows at registration."""
    import numpy as np
    from numpy.lib.stride_tricks import sliding_window_view

    close = 100.0 * np.exp(0.01 * np.sin(np.arange(_PROBE_ROWS + definition.window - 1.0)))
    columns = {
        "open": close * 0.999,
        "high": close * 1.01,
        "low": close * 0.99,
        "close": close,
        "volume": 1e6 + 1e4 * np.cos(np.arange(close.size)),
    }
    windows = [sliding_window_view(columns[c], definition.window) for c in definition.inputs]
    try:
        definition.apply(*windows)
    except Exception as exc:  # the user's code: any failure is a registration error naming it
        raise FeatureRegistrationError(
            f"{where}: compute failed on {_PROBE_ROWS} probe windows of shape {windows[0].shape}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _import(module: str, origin: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except FeatureRegistrationError:
        raise
    except ModuleNotFoundError as exc:
        raise FeatureRegistrationError(f"{origin}, which cannot be imported: {exc}") from exc
    except Exception as exc:  # the user's module: whatever it raised, say where it came from
        raise FeatureRegistrationError(f"{origin}; importing it failed: {type(exc).__name__}: {exc}") from exc


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def _load(entry_point: importlib.metadata.EntryPoint) -> None:
    """Import an entry point's module and, when it names a callable, call it to register."""
    origin = f"entry point {entry_point.name!r} ({entry_point.value}) of group {ENTRY_POINT_GROUP}"
    target: object = _import(entry_point.module, origin)
    for attribute in entry_point.attr.split(".") if entry_point.attr else ():
        if not hasattr(target, attribute):
            raise FeatureRegistrationError(f"{origin}: {entry_point.module} has no {entry_point.attr}")
        target = getattr(target, attribute)
    if isinstance(target, ModuleType):
        return
    if not callable(target):
        raise FeatureRegistrationError(f"{origin}: {entry_point.attr} is not callable")
    try:
        target()
    except FeatureRegistrationError:
        raise
    except Exception as exc:  # the user's registration function
        raise FeatureRegistrationError(f"{origin}: calling it failed: {type(exc).__name__}: {exc}") from exc


# --- the process's registry and its public API ---------------------------------------------------

_REGISTRY = FeatureRegistry()


def registry() -> FeatureRegistry:
    """The registry of this process (tests swap in a fresh one)."""
    return _REGISTRY


def _caller_module() -> str:
    return str(sys._getframe(2).f_globals.get("__name__", "<unknown module>"))


def get_feature_set(name: str) -> FeatureSet:
    """The named feature set: ``"default"`` (close and volume), ``"extended"`` (adds OHLC range
    features), ``"close_only"`` (the close alone), ``"ohlc"`` (close and range, no volume), or
    a set registered by your own feature modules (:func:`register_feature_set`).

    Examples
    --------
    >>> get_feature_set("default").lookback
    253
    """
    from quant_engine.features.definitions import BUILTIN_SETS

    builtin = BUILTIN_SETS.get(name)
    if builtin is not None:
        return builtin
    registered = registry().feature_sets().get(name)
    if registered is None:
        raise ValueError(f"no feature set {name!r}; known: {', '.join(feature_set_names())}")
    return registered.feature_set


def feature_set_names() -> Sequence[str]:
    """Names accepted by :func:`get_feature_set`: the built-in sets, then the registered ones."""
    from quant_engine.features.definitions import BUILTIN_SETS

    return (*BUILTIN_SETS, *registry().feature_sets())


def register_feature(
    name: str, inputs: Sequence[str], window: int, compute: Callable, description: str
) -> FeatureDefinition:
    """Declare a feature: one numpy function over trailing windows, run by batch and streaming alike.

    Parameters
    ----------
    name, inputs, window, compute, description
        As :class:`~quant_engine.features.definitions.FeatureDefinition`: ``compute(*windows)``
        gets one ``(n_rows, window)`` float64 array per input (last column = the current bar) and
        returns ``(n_rows,)``. It must treat each row on its own: the batch path passes every bar
        of a ticker's history at once, the streaming path one row per ticker.

    Returns
    -------
    FeatureDefinition

    Raises
    ------
    FeatureRegistrationError
        The name is taken (by a built-in or a registered feature), the window or inputs are
        invalid, or ``compute`` fails or returns the wrong shape on a few probe windows; the
        message names the calling module and the feature.
    """
    return _REGISTRY.register_feature(_caller_module(), name, inputs, window, compute, description)


def register_feature_set(name: str, features: Sequence[str], *, version: int = 1) -> FeatureSet:
    """Declare a feature set by name: built-in and registered features, in column order.

    Name it with a string literal: the DAG forms read the name from the module's source without
    importing it. Bump ``version`` whenever a definition in it changes, so stored features name
    the code that made them.

    Raises
    ------
    FeatureRegistrationError
        The name is taken or not an identifier, or a listed feature is unknown or repeated; the
        message names the calling module and the set.
    """
    return _REGISTRY.register_feature_set(_caller_module(), name, features, version)


# --- the names, without importing anything -------------------------------------------------------


def declared_feature_set_names() -> tuple[str, ...]:
    """The built-in set names, then those the feature modules declare, read from their source.

    For the DAG forms: nothing is imported (a module's packages are located, not run), so parsing
    a DAG stays light. A set registered with a computed name is not seen here;
    ``quant-engine features check`` reports such sets.

    Raises
    ------
    FeatureRegistrationError
        A configured module whose source cannot be found.
    """
    sources = [(m, f"{FEATURE_MODULES_VARIABLE} names {m!r}") for m in feature_modules_from_env()]
    sources += [(ep.module, f"entry point {ep.name!r} of group {ENTRY_POINT_GROUP}") for ep in _entry_points()]
    names = list(BUILTIN_FEATURE_SETS)
    for module, origin in sources:
        for name in _literal_set_names(_source_path(module, origin)):
            if name not in names:
                names.append(name)
    return tuple(names)


def _source_path(module: str, origin: str) -> Path:
    """Where ``module``'s source is, found as the import system would but without running any package."""
    loaded_file = getattr(sys.modules.get(module), "__file__", None)
    if loaded_file:
        return Path(loaded_file)
    spec, search = None, None
    parts = module.split(".")
    for depth in range(1, len(parts) + 1):
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[:depth]), search)
        if spec is None:
            break
        search = spec.submodule_search_locations
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise FeatureRegistrationError(f"{origin}, whose source file cannot be found on sys.path")
    return Path(spec.origin)


def _literal_set_names(path: Path) -> list[str]:
    """The literal first arguments of ``register_feature_set(...)`` calls in a source file."""
    names = []
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if called != "register_feature_set":
            continue
        first = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "name"), None)
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            names.append(first.value)
    return names
