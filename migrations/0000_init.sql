CREATE TABLE "socket_io_attachments" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"payload" "bytea" NOT NULL
);
--> statement-breakpoint
CREATE TABLE "log_entries" (
	"namespace_id" integer NOT NULL,
	"offset" bigint NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"payload" "bytea" NOT NULL,
	CONSTRAINT "log_entries_namespace_id_offset_pk" PRIMARY KEY("namespace_id","offset")
);
--> statement-breakpoint
CREATE TABLE "log_writers" (
	"writer_id" text PRIMARY KEY NOT NULL,
	"namespace_id" integer NOT NULL,
	"last_batch" bigint DEFAULT 0 NOT NULL,
	"last_from" bigint DEFAULT 0 NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "maintenance" (
	"task" text PRIMARY KEY NOT NULL,
	"last_started_at" timestamp with time zone,
	"last_finished_at" timestamp with time zone,
	"last_result" text
);
--> statement-breakpoint
CREATE TABLE "namespaces" (
	"id" serial PRIMARY KEY NOT NULL,
	"name" text NOT NULL,
	"head" bigint DEFAULT 0 NOT NULL,
	CONSTRAINT "namespaces_name_unique" UNIQUE("name")
);
--> statement-breakpoint
CREATE TABLE "sessions" (
	"pid_hash" "bytea" PRIMARY KEY NOT NULL,
	"namespace_id" integer NOT NULL,
	"sid" text NOT NULL,
	"floor_offset" bigint NOT NULL,
	"last_offset" bigint NOT NULL,
	"payload" "bytea" NOT NULL,
	"disconnected_at" timestamp with time zone DEFAULT now() NOT NULL,
	"expires_at" timestamp with time zone NOT NULL
);
--> statement-breakpoint
CREATE INDEX "sessions_expires_at_idx" ON "sessions" USING btree ("expires_at");--> statement-breakpoint
CREATE INDEX "sessions_namespace_sid_idx" ON "sessions" USING btree ("namespace_id","sid");