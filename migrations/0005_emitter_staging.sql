CREATE TABLE "staged_events" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"namespace" text NOT NULL,
	"payload" "bytea",
	"packet" jsonb,
	"created_at" timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
	CONSTRAINT "staged_events_one_payload" CHECK (("staged_events"."payload" IS NULL) <> ("staged_events"."packet" IS NULL))
);
--> statement-breakpoint
CREATE INDEX "staged_events_namespace_id_idx" ON "staged_events" USING btree ("namespace","id");