CREATE TABLE "nodes" (
	"node_id" text PRIMARY KEY NOT NULL,
	"started_at" timestamp with time zone DEFAULT now() NOT NULL,
	"heartbeat_at" timestamp with time zone DEFAULT now() NOT NULL,
	"dead_after_ms" bigint NOT NULL,
	"declared_dead" boolean DEFAULT false NOT NULL
);
--> statement-breakpoint
ALTER TABLE "sessions" ADD COLUMN "cursor_offset" bigint;--> statement-breakpoint
ALTER TABLE "sessions" ADD COLUMN "state" text DEFAULT 'disconnected' NOT NULL;--> statement-breakpoint
ALTER TABLE "sessions" ADD COLUMN "node_id" text;--> statement-breakpoint
ALTER TABLE "sessions" ADD COLUMN "generation" bigint DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE "sessions" ADD COLUMN "version" bigint DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE "sessions" ADD COLUMN "ttl_ms" bigint;--> statement-breakpoint
CREATE INDEX "sessions_node_id_idx" ON "sessions" USING btree ("node_id");