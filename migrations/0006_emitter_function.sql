-- emit(nsp, event, args, rooms, except_rooms): stages an event in the caller's
-- transaction, for triggers, stored procedures and programs in any language
-- (see docs/emitter.md). The nodes move it into the log once the transaction
-- commits; a rollback leaves nothing.
--
-- Migrations run with search_path set to the deployment's schema, and one set
-- of files serves every schema: the function is created through EXECUTE so
-- that its body names the schema's table, and its NOTIFY channel
-- ("<schema>:emit"), explicitly. SECURITY DEFINER with a fixed search_path:
-- callers need EXECUTE on it (and USAGE on the schema), not the table, and
-- cannot redirect its names. EXECUTE is revoked from PUBLIC; docs/runtime-grants.sql
-- grants it to the runtime role.
DO $migration$
DECLARE
  target text := current_schema();
BEGIN
  EXECUTE format($create$
CREATE FUNCTION %1$I.emit(
  nsp text,
  event text,
  args jsonb DEFAULT '[]'::jsonb,
  rooms text[] DEFAULT '{}'::text[],
  except_rooms text[] DEFAULT '{}'::text[]
) RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $body$
BEGIN
  IF nsp IS NULL OR left(nsp, 1) <> '/' THEN
    RAISE EXCEPTION '%1$s.emit: nsp must be a namespace name starting with "/" (got %%)', coalesce(quote_literal(nsp), 'NULL')
      USING ERRCODE = '22023', HINT = 'The main namespace is ''/''.';
  END IF;
  IF octet_length(nsp) > 1000 THEN
    RAISE EXCEPTION '%1$s.emit: nsp is %% bytes long; at most 1000', octet_length(nsp) USING ERRCODE = '22023';
  END IF;
  IF event IS NULL OR event = '' THEN
    RAISE EXCEPTION '%1$s.emit: event must be a non-empty event name' USING ERRCODE = '22023';
  END IF;
  IF event IN ('connect', 'connect_error', 'disconnect', 'disconnecting', 'newListener', 'removeListener') THEN
    RAISE EXCEPTION '%1$s.emit: "%%" is a reserved event name', event USING ERRCODE = '22023';
  END IF;
  IF args IS NULL OR jsonb_typeof(args) <> 'array' THEN
    RAISE EXCEPTION '%1$s.emit: args must be a JSON array of the event''s arguments (got %%)', coalesce(jsonb_typeof(args), 'NULL')
      USING ERRCODE = '22023', HINT = 'One argument: jsonb_build_array(value); none: ''[]''::jsonb.';
  END IF;
  IF jsonb_path_exists(args, 'lax $.**.__proto__') THEN
    RAISE EXCEPTION '%1$s.emit: args hold an object key "__proto__", which the log cannot store' USING ERRCODE = '22023';
  END IF;
  IF rooms IS NULL OR except_rooms IS NULL THEN
    RAISE EXCEPTION '%1$s.emit: rooms and except_rooms must be arrays (''{}'' for none), not NULL' USING ERRCODE = '22023';
  END IF;
  IF array_ndims(rooms) > 1 OR array_ndims(except_rooms) > 1 THEN
    RAISE EXCEPTION '%1$s.emit: rooms and except_rooms must be one-dimensional arrays' USING ERRCODE = '22023';
  END IF;
  IF array_position(rooms, NULL) IS NOT NULL OR array_position(except_rooms, NULL) IS NOT NULL THEN
    RAISE EXCEPTION '%1$s.emit: rooms and except_rooms cannot hold NULL' USING ERRCODE = '22023';
  END IF;
  INSERT INTO %1$I.staged_events (namespace, packet)
  VALUES (nsp, jsonb_build_array(jsonb_build_array(event) || args, to_jsonb(rooms), to_jsonb(except_rooms)));
  -- Delivered at commit only, and not at all after a rollback: the nodes learn of the row when they can see it.
  PERFORM pg_notify(%2$L, nsp);
END
$body$
$create$, target, target || ':emit');
  EXECUTE format('REVOKE ALL ON FUNCTION %I.emit(text, text, jsonb, text[], text[]) FROM PUBLIC', target);
END
$migration$;
