"""The run forms of the DAGs: every param with its type, bounds and description, defaults from the library.

A DAG file only wires its tasks; what a person fills in when triggering it lives here, so a form
and the code behind it never disagree (the defaults are read from the library when the DAG is
parsed) and the four forms read alike.
"""

from __future__ import annotations

from airflow.sdk import Param
from qe_airflow import SOURCES, dataset_params, feature_sets, reading_params, tickers_param

__all__ = ["drift_form", "ingestion_form", "training_form", "wfo_form"]


def ingestion_form() -> dict[str, Param]:
    """The run form of ``market_data_ingestion``."""
    return {
        "source": Param(
            None,
            type=["null", "string"],
            enum=[None, *SOURCES],
            description="Where bars come from; empty: QE_DEFAULT_SOURCE (synthetic, the embedded market, unless set).",
        ),
        "path": Param(
            None,
            type=["null", "string"],
            description="File or folder of bars, for the csv and parquet sources; empty: QE_DEFAULT_SOURCE_PATH "
            "when the source is the default one.",
        ),
        "tickers": tickers_param(
            None, "Tickers, a list or comma-separated; empty: QE_DEFAULT_TICKERS, else every ticker of the source."
        ),
        "start": Param(
            None,
            type=["null", "string"],
            format="date",
            description="First session to ingest (YYYY-MM-DD). Empty: the sessions that closed in the "
            "run's data interval, or the whole file for csv / parquet.",
        ),
        "end": Param(
            None,
            type=["null", "string"],
            format="date",
            description="Last session to ingest, inclusive; empty means the same as start.",
        ),
        "feature_set": Param(
            "default", type="string", enum=feature_sets(), description="Feature definitions to compute."
        ),
        **reading_params(),
    }


def wfo_form() -> dict[str, Param]:
    """The run form of ``wfo_pipeline``, its defaults the library's."""
    from quant_engine.wfo.defaults import DEFAULT_PARAMS as D
    from quant_engine.wfo.defaults import SPLITTERS

    return {
        **dataset_params(D),
        "start": Param(D["start"], type="string", format="date", description="First day of the sample."),
        "end": Param(D["end"], type="string", format="date", description="Last day of the sample, inclusive."),
        "pt_mult": Param(
            D["pt_mult"],
            type=["null", "number"],
            exclusiveMinimum=0,
            description="Triple barrier: profit-take distance in volatilities; null disables it.",
        ),
        "sl_mult": Param(
            D["sl_mult"],
            type=["null", "number"],
            exclusiveMinimum=0,
            description="Triple barrier: stop-loss distance in volatilities; null disables it.",
        ),
        "vol_window": Param(
            D["vol_window"], type="integer", minimum=2, description="Triple barrier: bars in the volatility estimate."
        ),
        "splitter": Param(
            D["splitter"],
            type="string",
            enum=list(SPLITTERS),
            description="cpcv: combinatorial purged CV, many backtest paths; purged_kfold: n_groups folds, one "
            "path; walk_forward: train on the past, test the next window, one path of the test windows "
            "(PBO by CSCV over them).",
        ),
        "n_groups": Param(
            D["n_groups"],
            type="integer",
            minimum=2,
            maximum=30,
            description="CPCV: contiguous groups of timestamps; purged_kfold: folds.",
        ),
        "n_test_groups": Param(
            D["n_test_groups"],
            type="integer",
            minimum=1,
            description="CPCV: test groups per split (smaller than n_groups).",
        ),
        "train_window": Param(
            D["train_window"],
            type=["string", "integer"],
            description="walk_forward: bars (504) or a duration ('730D') of the first training window "
            "(of every one when rolling).",
        ),
        "test_window": Param(
            D["test_window"],
            type=["string", "integer"],
            description="walk_forward: bars (252) or a duration ('365D') of each test window; they follow "
            "each other to the end of the data.",
        ),
        "anchored": Param(
            D["anchored"],
            type="boolean",
            description="walk_forward: on, training expands from the first bar; off, it rolls with train_window.",
        ),
        "embargo": Param(
            D["embargo"],
            type=["string", "integer"],
            description="Kept out of training after each test block (before each walk_forward test "
            "window): bars (5) or a duration ('5D').",
        ),
        "purge": Param(
            D["purge"],
            type="boolean",
            description="Drop training rows whose label overlaps the test (every splitter). Off leaks the "
            "test into training; for measuring that leak only.",
        ),
        "trials": Param(
            D["trials"],
            type=["object", "array"],
            description="XGBoost trials: a grid (object of lists, Cartesian product) or a list of "
            "objects; keys max_depth, learning_rate, n_estimators, subsample, "
            "colsample_bytree, min_child_weight, threshold.",
        ),
        "portfolio": Param(
            D["portfolio"],
            type="string",
            enum=["market_neutral", "directional"],
            description="market_neutral: demeaned probabilities, dollar-neutral, gross exposure 1 "
            "per bar; directional: +1/-1 per ticker from the threshold, equal weight.",
        ),
        "cost_bps": Param(
            D["cost_bps"], type="number", minimum=0, description="Cost per unit of position traded, in basis points."
        ),
        "seed": Param(D["seed"], type="integer", minimum=0, description="Seed of every model."),
        "min_group_rows": Param(
            D["min_group_rows"],
            type="integer",
            minimum=1,
            description="Fewest rows a CPCV group, fold or walk_forward test window (but the last) may hold.",
        ),
        # How the fits are cut into tasks, not what they compute: the report is the same for any chunk.
        "chunk": Param(
            WFO_CHUNK,
            type="integer",
            minimum=1,
            description="(trial, split) fits per mapped run_split task: more per task spreads each task "
            "instance's scheduling overhead over more fits; fewer spreads the fits over more workers.",
        ),
    }


#: Default fits per mapped ``run_split`` task of ``wfo_pipeline``. Measured on the scale-mode stack
#: (``bench/task_overhead.py``, README's "Task granularity"): a task instance costs ~13 s beyond its
#: fits; 15 fits of the 500-ticker universe (~10 s each) keep that under 10 %, and the default grid's
#: 60 fits still make 4 tasks, one per slot of two workers x 2.
WFO_CHUNK = 15


def training_form() -> dict[str, Param]:
    """The run form of ``spot_training``, its defaults the library's."""
    from quant_engine.training.defaults import TRAINING_DEFAULTS as D

    return {
        **dataset_params(D),
        "start": Param(
            D["start"],
            type=["null", "string"],
            format="date",
            description="First day of the data; empty: window_days before end.",
        ),
        "end": Param(
            D["end"],
            type=["null", "string"],
            format="date",
            description="Last day of the data, inclusive; empty: the last day the offline store holds.",
        ),
        "window_days": Param(
            D["window_days"], type="integer", minimum=30, description="Days of data when start is empty."
        ),
        "holdout_fraction": Param(
            D["holdout_fraction"],
            type="number",
            exclusiveMinimum=0,
            maximum=0.5,
            description="Share of the last timestamps held out to judge the model.",
        ),
        "embargo_bars": Param(
            D["embargo_bars"],
            type="integer",
            minimum=0,
            description="Timestamps before the holdout no training row may start in.",
        ),
        "runner": Param(
            D["runner"],
            type="string",
            enum=["local_spot", "sagemaker"],
            description="local_spot: trainer subprocess under the spot simulator; sagemaker: managed "
            "spot training job (QE_S3_BUCKET, QE_SAGEMAKER_ROLE_ARN).",
        ),
        "interruptions": Param(
            D["interruptions"],
            type="integer",
            minimum=0,
            description="local_spot: interruptions at seeded random rounds (kill or SIGTERM).",
        ),
        "interruption_rate_per_hour": Param(
            D["interruption_rate_per_hour"],
            type="number",
            minimum=0,
            description="local_spot: random interruptions per hour after those.",
        ),
        "hyperparameters": Param(
            D["hyperparameters"],
            type="object",
            description="num_round, checkpoint_every, seed, subsample, colsample_bytree and "
            "XGBoost's own (max_depth, learning_rate, ...).",
        ),
        "model_name": Param(D["model_name"], type="string", description="Registry name of the model."),
        "wfo_report": Param(
            D["wfo_report"],
            type=["null", "string"],
            description="The walk-forward report that justified these settings, kept in the metadata.",
        ),
        "wfo_run_id": Param(
            D["wfo_run_id"],
            type=["null", "string"],
            description="A finished wfo_pipeline run: train its selected trial's hyperparameters, labels and "
            "feature set on the full data; its PBO and deflated Sharpe go into the model's metadata.",
        ),
        "min_deflated_sharpe": Param(
            D["min_deflated_sharpe"],
            type=["null", "number"],
            minimum=0,
            exclusiveMaximum=1,
            description="Promote only when the wfo_run_id's deflated Sharpe ratio is above this; empty: not required.",
        ),
    }


def drift_form() -> dict[str, Param]:
    """The run form of ``drift_monitor``."""
    return {
        "model_name": Param("xgb_direction", type="string", description="Registry name of the monitored model."),
        "window_days": Param(
            60,
            type="integer",
            minimum=1,
            maximum=3650,
            description="Days of the latest stored data judged; never reaches back into the champion's training data.",
        ),
        "min_new_rows": Param(
            100,
            type="integer",
            minimum=1,
            description="Feature rows after the training data's end needed before a check runs.",
        ),
        "max_wait_hours": Param(
            6,
            type="number",
            minimum=0,
            maximum=24,
            description="Hours to wait for min_new_rows rows with settled labels before the run is "
            "skipped (0: look once); without a champion the run skips at once.",
        ),
        "comparison_threshold": Param(
            None,
            type=["null", "number"],
            exclusiveMinimum=0,
            maximum=1,
            description="Largest KS distance (after the Robust sample-size allowance) a "
            "feature may show; empty: each feature's threshold calibrated "
            "on training windows of the same length.",
        ),
        "psi_threshold": Param(
            None,
            type=["null", "number"],
            exclusiveMinimum=0,
            description="PSI above which a feature also counts as drifted; empty: reported only.",
        ),
        "wasserstein_threshold": Param(
            None,
            type=["null", "number"],
            exclusiveMinimum=0,
            description="W1/sigma above which a feature also counts as drifted; empty: reported only.",
        ),
        "min_drifted_features": Param(
            2,
            type="integer",
            minimum=1,
            description="Features that must drift together before the inputs count as "
            "drifted (one alone is noise a stationary market shows).",
        ),
        "confidence": Param(
            0.99,
            type="number",
            exclusiveMinimum=0,
            exclusiveMaximum=1,
            description="Level of the quality metrics' bounds against the holdout.",
        ),
    }
