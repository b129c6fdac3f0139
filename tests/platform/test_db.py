"""PostgreSQL errors classified once, by SQLSTATE: a bad row is dead-lettered, anything else is a pause."""

import psycopg
import psycopg_pool
import pytest

from service.platform.db import is_row_error

ROW_DATA = [
    "22001",  # string_data_right_truncation
    "22003",  # numeric_value_out_of_range
    "22007",  # invalid_datetime_format
    "22021",  # character_not_in_repertoire
    "22P02",  # invalid_text_representation
    "23502",  # not_null_violation
    "23503",  # foreign_key_violation (the link's account is gone)
    "23505",  # unique_violation
    "23514",  # check_violation
]
DEPENDENCY = [
    "25006",  # read_only_sql_transaction: a standby, default_transaction_read_only
    "08000",  # connection_exception
    "08006",  # connection_failure
    "53100",  # disk_full
    "53200",  # out_of_memory
    "53300",  # too_many_connections
    "57014",  # query_canceled (statement_timeout)
    "57P01",  # admin_shutdown
    "57P03",  # cannot_connect_now
    "58030",  # io_error
    "42501",  # insufficient_privilege: misconfigured grants
    "42P01",  # undefined_table: a migration not applied
    "3D000",  # invalid_catalog_name: the database is gone
    "28P01",  # invalid_password
    "40001",  # serialization_failure: retry
    "40P01",  # deadlock_detected: retry
]


@pytest.mark.parametrize("sqlstate", ROW_DATA)
def test_errors_about_the_rows_data_condemn_the_row(sqlstate):
    assert is_row_error(psycopg.errors.lookup(sqlstate)())


@pytest.mark.parametrize("sqlstate", DEPENDENCY)
def test_an_unavailable_read_only_or_misconfigured_database_is_a_pause_never_the_rows_fault(sqlstate):
    assert not is_row_error(psycopg.errors.lookup(sqlstate)())


@pytest.mark.parametrize(
    "error",
    [psycopg.OperationalError("connection lost"), psycopg.InterfaceError("closed"), psycopg_pool.PoolTimeout("x")],
    ids=["operational-no-sqlstate", "interface", "pool-timeout"],
)
def test_errors_without_a_sqlstate_are_a_pause(error):
    assert not is_row_error(error)


def test_errors_that_are_not_postgresqls_are_not_classified_as_the_rows():
    assert not is_row_error(ValueError("bad json"))
