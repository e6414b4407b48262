"""SQL of the connector's schema: accounts and their sealed credentials, API usage."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import asyncpg

from arbridge_connector.crypto import Sealed


@dataclass(frozen=True)
class AccountRow:
    account_id: str
    company_id: str
    user_id: str
    sender_id: str
    entity_id: str
    endpoint_url: str
    time_zone: str
    multi_entity: bool
    platform_services: bool
    state: str
    connected_at: datetime


_COLUMNS = (
    "account_id, company_id, user_id, sender_id, entity_id, endpoint_url, time_zone, "
    "multi_entity, platform_services, state, connected_at"
)


def _row(record: asyncpg.Record) -> AccountRow:
    return AccountRow(**{k: record[k] for k in _COLUMNS.split(", ")})


async def upsert_account(conn: asyncpg.Connection, account: AccountRow, sealed: Sealed) -> None:
    await conn.execute(
        f"""INSERT INTO accounts ({_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,now())
            ON CONFLICT (account_id) DO UPDATE SET company_id=$2, user_id=$3, sender_id=$4,
              entity_id=$5, endpoint_url=$6, time_zone=$7, multi_entity=$8,
              platform_services=$9, state=$10, connected_at=now(), updated_at=now()""",
        account.account_id,
        account.company_id,
        account.user_id,
        account.sender_id,
        account.entity_id,
        account.endpoint_url,
        account.time_zone,
        account.multi_entity,
        account.platform_services,
        account.state,
    )
    await conn.execute(
        """INSERT INTO account_credentials (account_id, key_id, nonce, ciphertext)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (account_id) DO UPDATE SET key_id=$2, nonce=$3, ciphertext=$4,
             updated_at=now()""",
        account.account_id,
        sealed.key_id,
        sealed.nonce,
        sealed.ciphertext,
    )


async def get_account(conn: asyncpg.Connection, account_id: str) -> AccountRow | None:
    record = await conn.fetchrow(f"SELECT {_COLUMNS} FROM accounts WHERE account_id=$1", account_id)
    return _row(record) if record else None


async def get_sealed(conn: asyncpg.Connection, account_id: str) -> Sealed | None:
    record = await conn.fetchrow(
        "SELECT key_id, nonce, ciphertext FROM account_credentials WHERE account_id=$1", account_id
    )
    if record is None:
        return None
    return Sealed(record["key_id"], bytes(record["nonce"]), bytes(record["ciphertext"]))


async def disconnect(conn: asyncpg.Connection, account_id: str) -> bool:
    await conn.execute("DELETE FROM account_credentials WHERE account_id=$1", account_id)
    status = await conn.execute(
        "UPDATE accounts SET state='disconnected', updated_at=now() WHERE account_id=$1", account_id
    )
    return bool(status.endswith(" 1"))


async def set_state(conn: asyncpg.Connection, account_id: str, state: str) -> None:
    await conn.execute(
        "UPDATE accounts SET state=$2, updated_at=now() WHERE account_id=$1", account_id, state
    )


async def all_sealed(conn: asyncpg.Connection) -> list[tuple[str, Sealed]]:
    records = await conn.fetch(
        "SELECT account_id, key_id, nonce, ciphertext FROM account_credentials FOR UPDATE"
    )
    return [
        (r["account_id"], Sealed(r["key_id"], bytes(r["nonce"]), bytes(r["ciphertext"])))
        for r in records
    ]


async def replace_sealed(conn: asyncpg.Connection, account_id: str, sealed: Sealed) -> None:
    await conn.execute(
        "UPDATE account_credentials SET key_id=$2, nonce=$3, ciphertext=$4, updated_at=now()"
        " WHERE account_id=$1",
        account_id,
        sealed.key_id,
        sealed.nonce,
        sealed.ciphertext,
    )


async def usage(
    conn: asyncpg.Connection, account_id: str, start: date, end: date
) -> list[tuple[date, str, int]]:
    records = await conn.fetch(
        "SELECT day, function, calls FROM api_usage WHERE account_id=$1 AND day BETWEEN $2 AND $3"
        " ORDER BY day, function",
        account_id,
        start,
        end,
    )
    return [(r["day"], r["function"], int(r["calls"])) for r in records]
