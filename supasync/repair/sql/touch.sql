-- supasync cursor touch trigger (gap repair "cursor" that `auto` may trust; design.md section 2).
-- Written for supasync. Idempotent. Rendered by supasync.repair.sqlinstall.render(touch=...).
--
-- Cursor mode reads "rows whose cursor column moved since the last repair". A column such as
-- updated_at with only `default now()` is set on INSERT and never again, so every UPDATE made
-- while a client was away would be missed. This installs what makes the column a real cursor:
--   * BEFORE INSERT OR UPDATE row triggers "supasync_touch" that set the column to
--     clock_timestamp() on every write (whatever the writer put there)
--   * supasync.touched_columns: which (schema, table, column) the triggers bump
--   * public.supasync_cursor_columns(): the RPC `repair="auto"` asks before it trusts a cursor
--     column. It lists only columns whose trigger is still there and enabled. SECURITY DEFINER;
--     it reveals table and column names only.

create schema if not exists supasync;
revoke all on schema supasync from public;

create table if not exists supasync.touched_columns (
  schema_name text not null,
  table_name text not null,
  column_name text not null,
  installed_at timestamptz not null default now(),
  primary key (schema_name, table_name)
);
revoke all on supasync.touched_columns from public;
do $$
begin
  if exists (select 1 from pg_roles where rolname = 'anon') then
    execute 'revoke all on supasync.touched_columns from anon, authenticated';
  end if;
end
$$;

create or replace function supasync.touch() returns trigger
language plpgsql set search_path = '' as $$
begin
  -- TG_ARGV[0] names the column, fixed when the trigger was created.
  new := jsonb_populate_record(new, jsonb_build_object(tg_argv[0], clock_timestamp()));
  return new;
end
$$;

do $$
declare
  name text;
  rel regclass;
  sch text;
  tab text;
  typ text;
  col text := {{touch_column}};
begin
  foreach name in array {{touch_tables}}::text[] loop
    rel := to_regclass(name);
    if rel is null then
      raise exception 'supasync: table % does not exist; create it first or fix the name', name;
    end if;
    select n.nspname, c.relname into sch, tab
      from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = rel;
    select t.typname into typ
      from pg_attribute a join pg_type t on t.oid = a.atttypid
     where a.attrelid = rel and a.attname = col and a.attnum > 0 and not a.attisdropped;
    if typ is null then
      raise exception 'supasync: table % has no column %; add it first '
                      '(e.g. % timestamptz not null default now())', rel, col, col;
    end if;
    if typ not in ('timestamptz', 'timestamp') then
      raise exception 'supasync: column %.% is %, not a timestamp; a cursor trigger sets it '
                      'to the time of the write', rel, col, typ;
    end if;
    execute format('drop trigger if exists supasync_touch on %s', rel);
    execute format(
      'create trigger supasync_touch before insert or update on %s '
      'for each row execute function supasync.touch(%L)', rel, col
    );
    insert into supasync.touched_columns (schema_name, table_name, column_name)
      values (sch, tab, col)
    on conflict (schema_name, table_name) do update set column_name = excluded.column_name;
  end loop;
end
$$;

-- The RPC: [{"schema": ..., "table": ..., "column": ...}, ...] for every column a supasync
-- trigger bumps (trigger present and enabled).
create or replace function public.supasync_cursor_columns() returns jsonb
language sql stable security definer set search_path = '' as $$
  select coalesce(jsonb_agg(jsonb_build_object(
           'schema', t.schema_name, 'table', t.table_name, 'column', t.column_name)
           order by t.schema_name, t.table_name), '[]'::jsonb)
    from supasync.touched_columns t
   where exists (
     select 1 from pg_trigger g
      where g.tgrelid = to_regclass(format('%I.%I', t.schema_name, t.table_name))
        and g.tgname = 'supasync_touch' and g.tgenabled <> 'D' and not g.tgisinternal
   )
$$;

revoke all on function public.supasync_cursor_columns() from public;
do $$
begin
  if exists (select 1 from pg_roles where rolname = 'anon') then
    execute 'grant execute on function public.supasync_cursor_columns() '
            'to anon, authenticated, service_role';
  end if;
end
$$;

notify pgrst, 'reload schema';
