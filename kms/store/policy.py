"""Grants and group memberships. Every change bumps one revision number, which each replica
polls to know when to reload."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

from sqlalchemy import Engine, delete, insert, select, update

from kms.domain.policy import Grant, Permission, PolicySnapshot
from kms.store.database import WRITE_OPTION
from kms.store.repository import database_errors
from kms.store.tables import GrantRow, GroupMemberRow, PolicyStateRow


class SqlPolicyRepository:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def revision(self) -> int:
        with database_errors(), self._engine.connect() as connection:
            return connection.execute(select(PolicyStateRow.revision).where(PolicyStateRow.id == 1)).scalar_one()

    def snapshot(self) -> PolicySnapshot:
        with database_errors(), self._engine.connect() as connection, connection.begin():
            revision = connection.execute(select(PolicyStateRow.revision).where(PolicyStateRow.id == 1)).scalar_one()
            grants = tuple(_grant(row) for row in connection.execute(select(GrantRow.__table__)))
            members = tuple(
                (row.group_name, row.identity) for row in connection.execute(select(GroupMemberRow.__table__))
            )
        return PolicySnapshot(revision, grants, members)

    def add_grant(self, grant: Grant, now: datetime) -> Grant:
        stored = Grant(
            grant.principal, grant.resource, grant.permissions, dict(grant.context), uuid.uuid4().hex, grant.created_by
        )
        self._write(
            insert(GrantRow.__table__).values(
                grant_id=stored.grant_id,
                principal=stored.principal,
                resource=stored.resource,
                permissions=",".join(sorted(p.value for p in stored.permissions)),
                context_json=json.dumps(dict(stored.context), sort_keys=True),
                created_by=stored.created_by,
                create_time=now,
            )
        )
        return stored

    def delete_grant(self, grant_id: str) -> bool:
        return self._write(delete(GrantRow.__table__).where(GrantRow.grant_id == grant_id)) > 0

    def add_member(self, group: str, identity: str) -> bool:
        table = GroupMemberRow.__table__
        exists = select(table).where(table.c.group_name == group, table.c.identity == identity).exists()
        with database_errors(), self._engine.connect() as connection:
            if connection.execute(select(exists)).scalar():
                return False
        self._write(insert(table).values(group_name=group, identity=identity))
        return True

    def remove_member(self, group: str, identity: str) -> bool:
        table = GroupMemberRow.__table__
        return self._write(delete(table).where(table.c.group_name == group, table.c.identity == identity)) > 0

    def _write(self, statement) -> int:  # noqa: ANN001 - any DML statement
        """Runs ``statement`` and bumps the revision in the same transaction; returns rowcount."""
        with database_errors(), self._engine.connect() as connection:
            connection = connection.execution_options(**{WRITE_OPTION: True})
            with connection.begin():
                count = connection.execute(statement).rowcount
                if count:
                    connection.execute(
                        update(PolicyStateRow.__table__).where(PolicyStateRow.id == 1)
                        .values(revision=PolicyStateRow.revision + 1)
                    )
        return count


def _grant(row) -> Grant:  # noqa: ANN001 - a SQLAlchemy Row
    return Grant(
        principal=row.principal,
        resource=row.resource,
        permissions=frozenset(Permission(name) for name in row.permissions.split(",") if name),
        context=json.loads(row.context_json or "{}"),
        grant_id=row.grant_id,
        created_by=row.created_by,
    )
