-- socket.io-postgres-recovery: two roles, least privilege.
--
-- Run once per database, as an administrator (a superuser or a role with
-- CREATEROLE). Choose real passwords. test/least-privilege.test.ts runs this
-- file (with unique role names and passwords) so that it stays correct.
--
--   sio_migrator  runs `socket.io-postgres-recovery migrate` (or migrate(pool)):
--                 owns the schema and its tables.
--   sio_runtime   what the Socket.IO servers log in as: reads and writes the
--                 tables, nothing else (no CREATE, DROP, ALTER, TRUNCATE).
--                 Its privileges come from runtime-grants.sql.

CREATE ROLE sio_migrator LOGIN PASSWORD 'change-me';
CREATE ROLE sio_runtime LOGIN PASSWORD 'change-me';

-- migrate() creates its schema (CREATE SCHEMA IF NOT EXISTS), which needs
-- CREATE on the database even when the schema exists.
DO $$
BEGIN
  EXECUTE format('GRANT CREATE ON DATABASE %I TO sio_migrator', current_database());
END
$$;
