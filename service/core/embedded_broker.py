"""kombu's SQLAlchemy transport with a short polling interval, for the embedded default broker.

The stock transport polls its table once a second, which adds up to a second of queue latency
to every job; it also hands every transport option to create_engine, so the interval cannot be
set there. The embedded default (no broker server) uses this subclass through the usual
`sqla+sqlite:///...` URL once install() has run.
"""

from datetime import datetime, timedelta

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Transport as _Transport
from sqlalchemy import create_engine, inspect, text

POLLING_INTERVAL = 0.05


class Transport(_Transport):
    polling_interval = POLLING_INTERVAL


def install() -> None:
    """Make `sqla+...` broker URLs use this transport."""
    TRANSPORT_ALIASES["sqla"] = f"{__name__}:Transport"
    TRANSPORT_ALIASES["sqlalchemy"] = f"{__name__}:Transport"


def purge_consumed(broker_url: str, older_than_seconds: float) -> int:
    """Delete messages that workers took more than `older_than_seconds` ago; returns how many.

    The transport marks a taken message invisible and keeps it forever. A worker that died with
    one is covered by the reaper, which sends its job again, so old taken messages serve nothing.
    """
    # The transport stamps rows with the local wall clock (naive), so the cutoff is in that clock.
    cutoff = datetime.now() - timedelta(seconds=older_than_seconds)
    engine = create_engine(broker_url.removeprefix("sqla+"))
    try:
        with engine.begin() as connection:
            if not inspect(connection).has_table("kombu_message"):
                return 0
            return connection.execute(
                text("DELETE FROM kombu_message WHERE visible = :no AND timestamp < :cutoff"),
                {"no": False, "cutoff": cutoff},
            ).rowcount
    finally:
        engine.dispose()
