CREATE TABLE "log_gaps" (
	"namespace_id" integer NOT NULL,
	"after_offset" bigint NOT NULL,
	"through_offset" bigint NOT NULL,
	"lost" boolean DEFAULT false NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "log_gaps_namespace_id_after_offset_pk" PRIMARY KEY("namespace_id","after_offset")
);
--> statement-breakpoint
ALTER TABLE "namespaces" ADD COLUMN "incarnation" timestamp with time zone DEFAULT pg_postmaster_start_time() NOT NULL;--> statement-breakpoint
ALTER TABLE "namespaces" ADD COLUMN "jumped_from" bigint;--> statement-breakpoint
ALTER TABLE "nodes" ADD COLUMN "reconciled_incarnation" timestamp with time zone;