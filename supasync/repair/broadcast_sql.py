"""The SQL of Broadcast from Database for one table (``supasync sql TABLE --broadcast``).

What it installs (realtime-protocol.md §9.3-9.5; the shape Supabase documents for
``realtime.broadcast_changes``):

* a trigger function ``<schema>.supasync_broadcast_<table>()``, ``security definer`` (the rows
  are written to ``realtime.messages`` by the function's owner, so the writers of the table need
  no insert policy there) with an empty ``search_path``, calling
  ``realtime.broadcast_changes(topic, TG_OP, TG_OP, TG_TABLE_NAME, TG_TABLE_SCHEMA, NEW, OLD)``;
* an ``after insert or update or delete ... for each row`` trigger ``supasync_broadcast`` on the
  table;
* with ``read_role``: an RLS policy on ``realtime.messages`` letting that role read the topic's
  broadcasts (``realtime.topic() = <topic>``). Without it the policy is printed as a comment:
  it decides who sees every row change of the table (the table's own RLS does not apply to
  broadcasts), so it should say who may read - e.g. by joining a membership table on
  ``auth.uid()``.

Names reach SQL only as quoted literals resolved server-side (``to_regclass``, ``format('%I')``),
as in :mod:`supasync.repair.sqlinstall`. The script is idempotent.
"""

from __future__ import annotations

import re

from ..core.errors import ConfigError
from ..core.extras import require

__all__ = ["TRIGGER_NAME", "apply_broadcast", "default_topic", "render_broadcast"]

TRIGGER_NAME = "supasync_broadcast"
_ROLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def default_topic(table: str) -> str:
    """The topic used when none is given: the table's name without its schema."""
    return table.strip().split(".")[-1].strip('"')


def render_broadcast(table: str, topic: str | None = None, *,
                     read_role: str | None = None) -> str:
    """The install script for one table.

    Raises:
        ConfigError: an empty table name or topic, or a role name that is not an identifier.
    """
    name = table.strip()
    if not name:
        raise ConfigError("Broadcast from Database needs a table name", key="table",
                          fix="e.g. supasync sql public.todos --broadcast")
    topic = (topic if topic is not None else default_topic(name)).strip()
    if not topic:
        raise ConfigError("the broadcast topic is empty", key="topic",
                          fix="give --topic, or leave it out to use the table's name")
    if "$" in name or "$" in topic:
        raise ConfigError("table names and topics with '$' are not supported here",
                          key="topic" if "$" in topic else "table",
                          fix="rename it, or write the trigger by hand")
    if read_role is not None and not _ROLE.match(read_role):
        raise ConfigError("the role to grant reading is not a role name", key="read_role",
                          value=read_role, fix="e.g. --read-role authenticated")
    parts = [f"""-- supasync: Broadcast from Database for {name} -> topic {topic!r}
do $supasync$
declare
  rel regclass := to_regclass({_literal(name)});
  fn text;
begin
  if rel is null then
    raise exception using errcode = '42P01', message = 'supasync: table does not exist',
      detail = {_literal(name)};
  end if;
  select format('%I.%I', n.nspname, 'supasync_broadcast_' || c.relname)
    into fn from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = rel;
  execute format($f$
    create or replace function %s() returns trigger
    language plpgsql security definer set search_path = '' as $body$
    begin
      perform realtime.broadcast_changes(%L, TG_OP, TG_OP, TG_TABLE_NAME, TG_TABLE_SCHEMA,
                                         NEW, OLD);
      return null;
    end
    $body$$f$, fn, {_literal(topic)});
  execute format('drop trigger if exists {TRIGGER_NAME} on %s', rel);
  execute format('create trigger {TRIGGER_NAME} after insert or update or delete on %s '
                 'for each row execute function %s()', rel, fn);
end
$supasync$;
"""]
    policy_sql = (
        f"create policy {_quote_ident('supasync read ' + topic)} on realtime.messages\n"
        f"  for select to {read_role or 'authenticated'}\n"
        f"  using (realtime.topic() = {_literal(topic)}"
        " and realtime.messages.extension = 'broadcast');\n"
    )
    if read_role is not None:
        parts.append(
            f"drop policy if exists {_quote_ident('supasync read ' + topic)} "
            "on realtime.messages;\n" + policy_sql)
    else:
        parts.append(
            "-- Who may receive these changes is decided by RLS on realtime.messages (the\n"
            "-- table's own policies do not apply to broadcasts). An example, letting every\n"
            "-- signed-in user read this topic (narrow it, e.g. with a membership table on\n"
            "-- auth.uid()); `--read-role ROLE` installs it:\n"
            + "".join(f"-- {line}\n" for line in policy_sql.splitlines()))
    return "\n".join(parts)


def _quote_ident(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def apply_broadcast(db_url: str, table: str, topic: str | None = None, *,
                    read_role: str | None = None) -> None:
    """Run :func:`render_broadcast`'s script in one transaction.

    Raises:
        ConfigError: bad arguments, or the table does not exist (named; nothing installed).
        MissingExtra: psycopg is not installed (``pip install 'supasync[db]'``).
        psycopg.Error: the database refused for another reason (e.g. no ``realtime`` schema:
            not a Supabase database).
    """
    script = render_broadcast(table, topic, read_role=read_role)
    psycopg = require("psycopg", "db", "supasync sql --broadcast --apply")
    try:
        with psycopg.connect(db_url) as conn:
            conn.execute(script.encode())
            conn.commit()
    except psycopg.errors.UndefinedTable as exc:
        if (exc.diag.message_primary or "").startswith("supasync: table"):
            raise ConfigError(f"table {table} does not exist",
                              fix="create it first, check the name, or schema-qualify it "
                                  "(e.g. public.todos)") from None
        raise
