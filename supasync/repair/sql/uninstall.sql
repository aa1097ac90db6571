-- Remove supasync's change log, cursor touch triggers and RPCs. Written for supasync; idempotent.
do $$
declare
  t record;
begin
  if to_regclass('supasync.logged_tables') is not null then
    for t in select schema_name, table_name from supasync.logged_tables loop
      if to_regclass(format('%I.%I', t.schema_name, t.table_name)) is not null then
        execute format('drop trigger if exists supasync_log on %I.%I', t.schema_name, t.table_name);
        execute format(
          'drop trigger if exists supasync_log_truncate on %I.%I', t.schema_name, t.table_name
        );
      end if;
    end loop;
  end if;
  if to_regclass('supasync.touched_columns') is not null then
    for t in select schema_name, table_name from supasync.touched_columns loop
      if to_regclass(format('%I.%I', t.schema_name, t.table_name)) is not null then
        execute format('drop trigger if exists supasync_touch on %I.%I', t.schema_name, t.table_name);
      end if;
    end loop;
  end if;
end
$$;
drop function if exists public.supasync_changes(text, text, text, bigint, integer);
drop function if exists public.supasync_cursor_columns();
drop schema if exists supasync cascade;
notify pgrst, 'reload schema';
