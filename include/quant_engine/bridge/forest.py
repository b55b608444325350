"""An XGBoost forest evaluated with numpy, bit for bit as ``Booster.inplace_predict``, for small batches.

``inplace_predict`` costs a fixed 170-400 µs a call however few the rows (most of it inside
libxgboost), a large share of the bridge's tick-to-signal budget when a bar close predicts a
handful of tickers. :class:`CompiledForest` flattens the trees of a ``binary:logistic`` ``gbtree``
model into node arrays and walks all (tree, row) pairs one depth level at a time with numpy
gathers, repeating xgboost's float32 arithmetic step by step:

* a row goes to the left child when ``x < threshold`` (float32), a NaN to the node's default child;
* the margin is the base margin plus the leaf values, added one tree after the other in float32;
* the base margin is ``-logf(1 / base_score - 1)`` of the stored base score (float32, C library);
* the probability is xgboost's ``Sigmoid``: ``1 / (expf(min(-margin, 88.7)) + 1 + 1e-16)`` in
  float32, with the C library's ``expf`` (numpy's float32 ``exp`` often differs in the last bit).

:meth:`CompiledForest.compile` hands a forest out only after it reproduced the booster's margins
and probabilities exactly on probe rows built from the model's own thresholds; a model it cannot
reproduce raises :class:`NotCompilableError`, and the caller keeps predicting with xgboost.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    import xgboost as xgb

__all__ = ["MAX_COMPILED_STEPS", "PROBE_ROWS", "ROW_OVERHEAD_STEPS", "CompiledForest", "NotCompilableError"]

#: xgboost's fixed cost per call, in steps of the compiled walk (one tree, one depth level, one row).
#: Each row costs the walk ``n_trees * depth + ROW_OVERHEAD_STEPS`` steps more than it costs xgboost,
#: so the walk is the cheaper one up to :attr:`CompiledForest.max_rows` rows: 128 for 50 trees of
#: depth 4, 17 for 300 of depth 6 (crossovers measured with ``bench/forest.py``, rounded down).
MAX_COMPILED_STEPS = 32_000
#: The walk's extra cost per row besides its steps, mostly the C ``expf`` call of the sigmoid.
ROW_OVERHEAD_STEPS = 50

#: Rows of each of the self-check's two probe batches: a hist-trained model has at most 256
#: thresholds per feature, so each is probed just below, at and just above, in random combinations.
PROBE_ROWS = 1024

#: Values every feature is probed at besides its thresholds: the infinities, the float32 extremes, zeros.
_EXTREMES = np.array([-np.inf, np.finfo(np.float32).min, -0.0, 0.0, np.finfo(np.float32).max, np.inf], dtype=np.float32)
#: The constants of xgboost's float ``Sigmoid``: the exponent is capped below ``expf``'s overflow.
_SIGMOID_EXPONENT_CAP = np.float32(88.7)
_SIGMOID_EPSILON = np.float32(1e-16)
_ONE = np.float32(1.0)

Float32Function = Callable[[float], float]


class NotCompilableError(Exception):
    """The booster cannot be evaluated exactly by :class:`CompiledForest`; the message says why."""


def _libm_function(name: str) -> Float32Function:
    """A float32 function of the C math library, the one libxgboost calls."""
    path = ctypes.util.find_library("m")
    if path is None:
        raise NotCompilableError("the C math library (libm) was not found")
    try:
        function = getattr(ctypes.CDLL(path), name)
    except (OSError, AttributeError) as exc:
        raise NotCompilableError(f"{name} of the C math library {path!r} could not be loaded: {exc}") from None
    function.restype, function.argtypes = ctypes.c_float, [ctypes.c_float]
    return function


def _float32_from_decimal(texts: Sequence[str]) -> np.ndarray:
    """Decimal strings as the nearest float32, as xgboost's JSON reader rounds them.

    Rounding through float64 first is wrong exactly where the float64 lands on a tie between two
    float32 values that the decimal itself does not sit on; those (rare) ties are settled exactly.
    """
    wide = np.array(texts, dtype=np.float64)
    narrow = wide.astype(np.float32)
    toward = np.nextafter(narrow, np.where(wide > narrow, np.float32(np.inf), np.float32(-np.inf)))
    ties = (wide != narrow) & (wide == (narrow.astype(np.float64) + toward.astype(np.float64)) / 2)
    for i in np.flatnonzero(ties).tolist():
        exact, tie = Fraction(texts[i]), Fraction(float(wide[i]))
        if exact != tie and (exact > tie) == (toward[i] > narrow[i]):
            narrow[i] = toward[i]
    return narrow


def _check_supported(learner: dict[str, Any]) -> None:
    """Raise :class:`NotCompilableError` unless the model is one this evaluator reproduces."""
    objective = learner["objective"]["name"]
    if objective != "binary:logistic":
        raise NotCompilableError(f"objective {objective!r} is not supported (only binary:logistic)")
    booster = learner["gradient_booster"]["name"]
    if booster != "gbtree":
        raise NotCompilableError(f"booster {booster!r} is not supported (only gbtree)")
    param = learner["learner_model_param"]
    if int(param["num_target"]) != 1:
        raise NotCompilableError(f"the model has {param['num_target']} targets; only one output is supported")
    trees = learner["gradient_booster"]["model"]["trees"]
    if not trees:
        raise NotCompilableError("the model has no trees")
    for tree in trees:
        if int(tree["tree_param"]["size_leaf_vector"]) > 1:
            raise NotCompilableError(f"tree {tree['id']} has vector leaves; only scalar leaves are supported")
        if any(tree["split_type"]):
            raise NotCompilableError(f"tree {tree['id']} has categorical splits; only numeric ones are supported")


def _base_score(param: dict[str, Any]) -> np.float32:
    """The stored base score (a probability); xgboost 3 writes it as a one-element list, ``"[5E-1]"``."""
    text = str(param["base_score"]).strip()
    values = json.loads(text, parse_float=str, parse_int=str) if text.startswith("[") else [text]
    if len(values) != 1:
        raise NotCompilableError(f"base_score {text!r} has {len(values)} values; one output is supported")
    score = _float32_from_decimal(values)[0]
    if not 0 < score < 1:
        raise NotCompilableError(f"base_score {text!r} is outside (0, 1)")
    return score


def _sibling_order(left: Sequence[int], right: Sequence[int]) -> tuple[list[int], int]:
    """A tree's reachable nodes in breadth-first order, each right child just after its left one; and its depth."""
    order, level = [0], [0]
    i = 0
    while i < len(order):
        node = order[i]
        if left[node] != -1:
            order += (left[node], right[node])
            level += (level[i] + 1, level[i] + 1)
            if len(order) > len(left):
                raise NotCompilableError("a tree's children do not form a tree")
        i += 1
    return order, max(level)


class CompiledForest:
    """A ``binary:logistic`` forest as flat node arrays, evaluated for all trees and rows at once.

    Nodes are renumbered so that a node's right child directly follows its left one: one level of
    the walk is ``node = left[node] + (x >= threshold)``, and a NaN ``x`` adds the node's
    ``default_right``. A leaf is its own left child with a NaN threshold (never ``>=``), so rows
    that reached a leaf stay there while deeper trees finish. Node 0 is an extra leaf holding the
    base margin and is walked as tree 0, so summing the reached leaves' values over the trees in
    order adds them to the base margin as xgboost does.

    Build with :meth:`compile`, which checks the forest against the booster before returning it.

    Parameters
    ----------
    learner : dict
        ``learner`` of the booster's JSON model (``booster.save_raw("json")`` read with
        ``parse_float=str``, so thresholds are rounded to float32 once), of a supported kind.
    expf, logf : callable
        float32 ``expf`` and ``logf`` of the C math library.
    """

    def __init__(self, learner: dict[str, Any], expf: Float32Function, logf: Float32Function) -> None:
        self.n_features = int(learner["learner_model_param"]["num_feature"])
        self.base_margin = -np.float32(logf(float(_ONE / _base_score(learner["learner_model_param"]) - _ONE)))
        self._expf = expf
        # Node 0 is a leaf (root 0, pointing at itself) that holds the base margin; the trees follow it.
        features: list[ArrayLike] = [[0]]
        thresholds: list[ArrayLike] = [[np.nan]]
        lefts: list[ArrayLike] = [[0]]
        default_right: list[ArrayLike] = [[False]]
        values: list[ArrayLike] = [[self.base_margin]]
        roots, depth = [0], 0
        start = 1
        for tree in learner["gradient_booster"]["model"]["trees"]:
            order, tree_depth = _sibling_order(tree["left_children"], tree["right_children"])
            new_id = np.full(len(tree["left_children"]), -1, dtype=np.intp)
            new_id[order] = np.arange(start, start + len(order))
            left = np.asarray(tree["left_children"], dtype=np.intp)[order]
            leaf = left == -1
            conditions = _float32_from_decimal([str(tree["split_conditions"][node]) for node in order])
            lefts.append(np.where(leaf, new_id[order], new_id[left]))
            features.append(np.where(leaf, 0, np.asarray(tree["split_indices"], dtype=np.intp)[order]))
            thresholds.append(np.where(leaf, np.float32(np.nan), conditions))
            default_right.append(~leaf & ~np.asarray(tree["default_left"], dtype=bool)[order])
            values.append(np.where(leaf, conditions, np.float32(0)))
            roots.append(start)
            depth = max(depth, tree_depth)
            start += len(order)
        self._feature = np.concatenate(features).astype(np.intp)
        if self._feature.max() >= self.n_features:
            raise NotCompilableError(f"a split reads feature {self._feature.max()} of a model of {self.n_features}")
        self._threshold = np.concatenate(thresholds).astype(np.float32)
        self._left = np.concatenate(lefts).astype(np.intp)
        self._default_right = np.concatenate(default_right).astype(bool)
        self._value = np.concatenate(values).astype(np.float32)
        self._roots = np.asarray(roots, dtype=np.intp)[:, None]
        self.depth = depth

    @classmethod
    def compile(cls, booster: xgb.Booster, *, probe_rows: int = PROBE_ROWS) -> CompiledForest:
        """The booster's forest, checked bit for bit against ``booster.inplace_predict`` on probe rows.

        Raises
        ------
        NotCompilableError
            The model is of a kind this evaluator does not reproduce (not ``binary:logistic``, not
            ``gbtree``, several outputs, categorical splits), the C math library is missing, or the
            forest disagrees with the booster on a probe row.
        """
        learner = json.loads(booster.save_raw("json"), parse_float=str)["learner"]
        _check_supported(learner)
        forest = cls(learner, _libm_function("expf"), _libm_function("logf"))
        forest.verify(booster, probe_rows=probe_rows)
        return forest

    @property
    def n_trees(self) -> int:
        return len(self._roots) - 1

    @property
    def max_rows(self) -> int:
        """The most rows a call is cheaper here than through ``inplace_predict`` (:data:`MAX_COMPILED_STEPS`)."""
        return MAX_COMPILED_STEPS // (self.n_trees * self.depth + ROW_OVERHEAD_STEPS)

    def verify(self, booster: xgb.Booster, *, probe_rows: int = PROBE_ROWS) -> None:
        """Compare margins and probabilities bit for bit with ``booster.inplace_predict`` on probe rows.

        Raises
        ------
        NotCompilableError
            Naming how many probe rows differ and the first of them.
        """
        for rows in self.probe_rows(probe_rows):
            for kind, ours, theirs in (
                ("margin", self.predict_margin(rows), booster.inplace_predict(rows, predict_type="margin")),
                ("probability", self.predict(rows), booster.inplace_predict(rows)),
            ):
                differs = np.flatnonzero(ours.view(np.uint32) != np.asarray(theirs, dtype=np.float32).view(np.uint32))
                if differs.size:
                    i = differs[0]
                    raise NotCompilableError(
                        f"the compiled {kind} differs from xgboost's on {differs.size} of {len(rows)} probe rows, "
                        f"e.g. {ours[i]!r} != {theirs[i]!r} for row {rows[i].tolist()}"
                    )

    def probe_rows(self, count: int = PROBE_ROWS) -> tuple[np.ndarray, np.ndarray]:
        """Two deterministic float32 batches of ``count`` rows that take every branch, the second with NaNs.

        Column ``f`` holds feature ``f``'s thresholds, their float32 neighbours on both sides and
        :data:`_EXTREMES`, repeated and shuffled, so the rows fall on every side of every threshold
        in random combinations (any other value routes as one of these). The second batch is the
        first with 10% of its cells NaN; :meth:`predict_margin` takes another path with NaNs.
        """
        rng = np.random.default_rng(0)
        splits = ~np.isnan(self._threshold)
        columns = []
        for feature in range(self.n_features):
            thresholds = np.unique(self._threshold[splits & (self._feature == feature)])
            values = np.concatenate(
                [
                    thresholds,
                    np.nextafter(thresholds, np.float32(-np.inf)),
                    np.nextafter(thresholds, np.float32(np.inf)),
                    _EXTREMES,
                ]
            )
            # Shuffled before the cut as well, so a feature with more values than rows is sampled evenly.
            columns.append(rng.permutation(np.resize(rng.permutation(values), count)))
        clean = np.stack(columns, axis=1).astype(np.float32)
        with_nan = np.where(rng.random(clean.shape) < 0.1, np.float32(np.nan), clean)
        return clean, with_nan

    def _check(self, rows: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.n_features:
            raise ValueError(f"rows must have shape (n, {self.n_features}) for this forest, got {rows.shape}")
        return rows

    def predict_margin(self, rows: np.ndarray) -> np.ndarray:
        """float32 margins of ``(n, n_features)`` rows (converted to float32), as ``predict_type="margin"``."""
        rows = self._check(rows)
        flat, offsets = rows.ravel(), np.arange(len(rows)) * self.n_features
        nodes = np.repeat(self._roots, len(rows), axis=1)  # (1 + n_trees, n_rows)
        check_nan = bool(np.isnan(flat).any())
        for _ in range(self.depth):
            x = flat.take(self._feature.take(nodes) + offsets)
            right = x >= self._threshold.take(nodes)
            if check_nan:
                right |= np.isnan(x) & self._default_right.take(nodes)
            nodes = self._left.take(nodes) + right
        # accumulate adds strictly tree after tree, as xgboost does; a sum could pair the terms up.
        return np.add.accumulate(self._value.take(nodes), axis=0)[-1]

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """float32 probabilities of class 1, as ``booster.inplace_predict(rows)``."""
        exponent = np.minimum(-self.predict_margin(rows), _SIGMOID_EXPONENT_CAP)
        exp = np.fromiter(map(self._expf, exponent.tolist()), dtype=np.float32, count=len(exponent))
        return _ONE / (exp + _ONE + _SIGMOID_EPSILON)
