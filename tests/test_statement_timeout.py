"""A server process's run database cancels any query that runs longer than its statement timeout, and the server
answers that as a request too expensive (400), not as a database outage: tested on the real PostgreSQL."""

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy import exc as sa_exc

from mdagent_hpc.server.app import ServerSettings, run_db_engine_options, too_long

URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def test_a_query_longer_than_the_statement_timeout_is_cancelled_and_named_so():
    engine = create_engine(URL, **run_db_engine_options(ServerSettings(statement_timeout_s=1, read_threads=1)))
    try:
        with engine.connect() as db:
            assert db.execute(text("SHOW statement_timeout")).scalar() == "1s"
            assert db.execute(text("SELECT pg_sleep(0.1), 1")).all()[0][1] == 1  # a quick query is served
        with engine.connect() as db, pytest.raises(sa_exc.DBAPIError) as caught:
            db.execute(text("SELECT pg_sleep(5)"))
        assert too_long(caught.value)
    finally:
        engine.dispose()


def test_a_dropped_connection_is_not_taken_for_a_long_query():
    assert not too_long(sa_exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")))
