-- socket.io-postgres-recovery: what the runtime role may do in the schema.
--
-- Run as the migrator (the tables' owner) after every `migrate`, so that
-- tables added by a new version are covered too. For a schema other than
-- socket_io, replace the name. test/least-privilege.test.ts runs this file.
--
-- The adapter needs, at run time: SELECT/INSERT/UPDATE/DELETE on its tables
-- (log, sessions, attachments, maintenance), the sequences behind their ids,
-- and nothing that needs a privilege for LISTEN/NOTIFY or the advisory lock
-- that serializes pruning. Reading the migrations journal lets it (and the
-- CLI's status) tell which migrations are applied; writing it is refused.

GRANT USAGE ON SCHEMA socket_io TO sio_runtime;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA socket_io TO sio_runtime;
REVOKE INSERT, UPDATE, DELETE ON socket_io.__drizzle_migrations FROM sio_runtime;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA socket_io TO sio_runtime;
REVOKE USAGE ON SEQUENCE socket_io.__drizzle_migrations_id_seq FROM sio_runtime;
-- The SQL function emit() (createEmitter's staging, for triggers and other
-- languages). It runs as its owner (SECURITY DEFINER), so an application role
-- that should emit from its own transactions needs only USAGE on the schema
-- and this EXECUTE, not the tables.
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA socket_io TO sio_runtime;
