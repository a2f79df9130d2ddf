CREATE TABLE "expired_sessions" (
	"id" bigint PRIMARY KEY NOT NULL,
	"namespace" text NOT NULL,
	"sid" text NOT NULL,
	"expired_at" timestamp with time zone DEFAULT now() NOT NULL
);
