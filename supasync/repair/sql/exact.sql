-- supasync exact-mode change log (gap repair "exact"; see the supasync README, "Gap repair and the cache").
-- Written for supasync. Idempotent: run it again to add tables or change the retention.
-- Rendered by supasync.repair.sqlinstall.render(); the placeholders below are filled there.
--
-- What it installs:
--   * schema supasync (not exposed through PostgREST), with
--       change_log     one entry per written row: table, primary key (JSON array), op, the
--                      writing transaction's id (pg_current_xact_id(), xid8) and its start time
--       logged_tables  the tables whose writes are logged, with their primary-key columns
--       settings       retention and the highest pruned transaction id (pruned_max)
--   * AFTER row triggers "supasync_log" (and a TRUNCATE statement trigger
--     "supasync_log_truncate") on each chosen table
--   * public.supasync_changes(...): the RPC clients call through /rest/v1/rpc/supasync_changes.
--     SECURITY DEFINER, returns only keys, ops and transaction ids: rows are re-read through
--     PostgREST with the subscriber's token, so RLS decides what each subscriber gets.
--     Note what it does reveal: any API role that may call it learns the primary keys written
--     in a logged table and when (not the rows). Revoke EXECUTE from anon if that matters.
--
-- Horizon: every answer carries pg_snapshot_xmin(pg_current_snapshot()) of the snapshot that
-- read the log. Every transaction below it has finished, so the next read starts there and never
-- skips a transaction that was still open (a long transaction committing late is read then).

create schema if not exists supasync;
revoke all on schema supasync from public;

create table if not exists supasync.change_log (
  id bigint generated always as identity primary key,
  schema_name text not null,
  table_name text not null,
  pk jsonb,
  op "char" not null check (op in ('I', 'U', 'D', 'T')),
  xid xid8 not null default pg_current_xact_id(),
  logged_at timestamptz not null default now()
);
create index if not exists change_log_read on supasync.change_log (schema_name, table_name, xid, id);
create index if not exists change_log_age on supasync.change_log (logged_at);

create table if not exists supasync.logged_tables (
  schema_name text not null,
  table_name text not null,
  pk_columns text[] not null,
  installed_at timestamptz not null default now(),
  primary key (schema_name, table_name)
);

create table if not exists supasync.settings (
  id boolean primary key default true check (id),
  retention interval not null,
  pruned_max xid8 not null default '0',
  pruned_at timestamptz
);
insert into supasync.settings (retention) values ({{retention}})
on conflict (id) do update set retention = excluded.retention;

revoke all on all tables in schema supasync from public;
do $$
begin
  -- Supabase's API roles get table rights by default privileges; none of them may touch the log.
  if exists (select 1 from pg_roles where rolname = 'anon') then
    execute 'revoke all on all tables in schema supasync from anon, authenticated';
  end if;
end
$$;

-- Delete entries older than the retention and remember the highest transaction id deleted:
-- a client whose horizon is at or below it may have missed entries and must diff instead.
create or replace function supasync.prune() returns void
language plpgsql security definer set search_path = '' as $$
declare
  keep interval;
  top xid8;
begin
  -- One pruner at a time; the others simply skip (writers must not queue behind it).
  if not pg_try_advisory_xact_lock(hashtext('supasync.prune')) then
    return;
  end if;
  select s.retention into keep from supasync.settings s;
  with gone as (
    delete from supasync.change_log l where l.logged_at < now() - keep returning l.xid
  )
  select g.xid into top from gone g order by g.xid desc limit 1;
  if top is not null then
    update supasync.settings s
       set pruned_max = greatest(s.pruned_max, top), pruned_at = now();
  end if;
end
$$;

create or replace function supasync.log_change() returns trigger
language plpgsql security definer set search_path = '' as $$
declare
  new_pk jsonb;
  old_pk jsonb;
begin
  -- TG_ARGV holds the primary-key column names, fixed when the trigger was created.
  if tg_op <> 'DELETE' then
    select jsonb_agg(to_jsonb(new) -> k.col order by k.ord) into new_pk
      from unnest(tg_argv) with ordinality as k(col, ord);
  end if;
  if tg_op <> 'INSERT' then
    select jsonb_agg(to_jsonb(old) -> k.col order by k.ord) into old_pk
      from unnest(tg_argv) with ordinality as k(col, ord);
  end if;
  if tg_op = 'UPDATE' and old_pk is distinct from new_pk then
    -- The key changed: the old key is gone for every subscriber.
    insert into supasync.change_log (schema_name, table_name, pk, op)
      values (tg_table_schema, tg_table_name, old_pk, 'D');
  end if;
  insert into supasync.change_log (schema_name, table_name, pk, op)
    values (tg_table_schema, tg_table_name, coalesce(new_pk, old_pk), left(tg_op, 1));
  -- Prune now and then from writers, so the log stays bounded without a scheduler.
  if random() < 0.01 then
    perform supasync.prune();
  end if;
  return null;
end
$$;

create or replace function supasync.log_truncate() returns trigger
language plpgsql security definer set search_path = '' as $$
begin
  -- A truncate has no per-row keys: clients that read this entry compare the whole table.
  insert into supasync.change_log (schema_name, table_name, pk, op)
    values (tg_table_schema, tg_table_name, null, 'T');
  return null;
end
$$;

do $$
declare
  name text;
  rel regclass;
  sch text;
  tab text;
  cols text[];
begin
  foreach name in array {{tables}}::text[] loop
    rel := to_regclass(name);
    if rel is null then
      raise exception using errcode = 'undefined_table', detail = name,
        message = format('supasync: table %s does not exist', name),
        hint = 'create it first, check the name, or schema-qualify it (e.g. public.todos)';
    end if;
    select n.nspname, c.relname into sch, tab
      from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = rel;
    select array_agg(a.attname::text order by k.ord) into cols
      from pg_index i
      cross join unnest(i.indkey) with ordinality as k(attnum, ord)
      join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
     where i.indrelid = rel and i.indisprimary;
    if cols is null then
      raise exception using errcode = 'invalid_table_definition', detail = rel::text,
        message = format('supasync: table %s has no primary key; exact mode needs one', rel),
        hint = 'add a primary key to it, or use the cursor or diff repair mode for it';
    end if;
    execute format('drop trigger if exists supasync_log on %s', rel);
    execute format(
      'create trigger supasync_log after insert or update or delete on %s '
      'for each row execute function supasync.log_change(%s)',
      rel, (select string_agg(quote_literal(c), ', ') from unnest(cols) as c)
    );
    execute format('drop trigger if exists supasync_log_truncate on %s', rel);
    execute format(
      'create trigger supasync_log_truncate after truncate on %s '
      'for each statement execute function supasync.log_truncate()', rel
    );
    insert into supasync.logged_tables (schema_name, table_name, pk_columns)
      values (sch, tab, cols)
    on conflict (schema_name, table_name) do update set pk_columns = excluded.pk_columns;
  end loop;
end
$$;

-- The RPC. p_table: "schema.table" or "table" (public). Entries with xid >= p_since, after
-- (p_after_xid, p_after_id) when paging, in (xid, id) order, at most p_limit of them.
-- p_since null (or p_limit 0) returns no entries: just the horizon, for a first full read.
-- A page holds at most 10000 entries; "limit" in the answer says how many were allowed.
-- STABLE: the whole answer comes from one snapshot, so "horizon" matches what was read.
create or replace function public.supasync_changes(
  p_table text,
  p_since text default null,
  p_after_xid text default null,
  p_after_id bigint default 0,
  p_limit integer default 1000
) returns jsonb
language plpgsql stable security definer set search_path = '' as $$
declare
  parts text[] := parse_ident(p_table);
  sch text;
  tab text;
begin
  if array_length(parts, 1) = 2 then
    sch := parts[1];
    tab := parts[2];
  else
    sch := 'public';
    tab := parts[array_length(parts, 1)];
  end if;
  if not exists (
    select 1 from supasync.logged_tables t where t.schema_name = sch and t.table_name = tab
  ) then
    return jsonb_build_object('logged', false, 'table', sch || '.' || tab);
  end if;
  return jsonb_build_object(
    'logged', true,
    'table', sch || '.' || tab,
    'horizon', pg_snapshot_xmin(pg_current_snapshot())::text,
    'pruned_max', (select s.pruned_max::text from supasync.settings s),
    'retention_s', (select extract(epoch from s.retention) from supasync.settings s),
    'limit', least(greatest(p_limit, 0), 10000),
    'entries', coalesce((
      select jsonb_agg(jsonb_build_array(e.id, e.xid::text, e.op, e.pk) order by e.xid, e.id)
        from (
          select l.id, l.xid, l.op, l.pk
            from supasync.change_log l
           where p_since is not null
             and l.schema_name = sch and l.table_name = tab
             and l.xid >= p_since::xid8
             and (l.xid, l.id) > (coalesce(p_after_xid, '0')::xid8, coalesce(p_after_id, 0))
           order by l.xid, l.id
           limit least(greatest(p_limit, 0), 10000)
        ) e
    ), '[]'::jsonb)
  );
end
$$;

revoke all on function public.supasync_changes(text, text, text, bigint, integer) from public;
do $$
begin
  if exists (select 1 from pg_roles where rolname = 'anon') then
    execute 'grant execute on function public.supasync_changes(text, text, text, bigint, integer) '
            'to anon, authenticated, service_role';
  end if;
end
$$;

-- Ask PostgREST to see the new function (harmless where nothing listens).
notify pgrst, 'reload schema';
