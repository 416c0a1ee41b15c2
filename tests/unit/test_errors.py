"""The error tree: one root, Airflow's no-retry semantics kept, every error drawn in the docstring."""

from __future__ import annotations

import inspect

from airflow.sdk.exceptions import AirflowFailException

from kafka_mongo_etl import errors
from kafka_mongo_etl.records import BadRecordError

DEFINED = [
    value
    for value in vars(errors).values()
    if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == errors.__name__
]


def test_every_error_is_under_one_root_except_the_stop_signal() -> None:
    assert {error for error in DEFINED if not issubclass(error, errors.EtlError)} == {errors.StopRequested}
    assert not issubclass(errors.StopRequested, Exception)  # no `except Exception` may swallow it
    assert issubclass(BadRecordError, errors.EtlError)


def test_what_a_retry_cannot_cure_is_an_airflow_fail_exception() -> None:
    not_retried = {error for error in DEFINED if issubclass(error, AirflowFailException)}
    assert not_retried == {
        errors.NotRetriedError,
        errors.DeadLetterLimitError,
        errors.RetentionGapError,
        errors.OffsetAboveWatermarkError,
        errors.ParamsRefusedError,
    }
    assert all(issubclass(error, errors.NotRetriedError) for error in not_retried)
    refused = errors.RetentionGapError("orders", "p0: 3 records")
    assert isinstance(refused, errors.EtlError) and "on_retention_gap='skip'" in str(refused)


def test_the_docstring_draws_every_error() -> None:
    drawn = errors.__doc__ or ""
    assert [error.__name__ for error in DEFINED if f"── {error.__name__}" not in drawn] == []
    assert "── BadRecordError" in drawn


def test_write_failed_error_is_one_class_whatever_the_import_path() -> None:
    from kafka_mongo_etl import mongo_sink, write_models

    assert write_models.WriteFailedError is mongo_sink.WriteFailedError is errors.WriteFailedError
