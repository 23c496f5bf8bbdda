CREATE TABLE "wallet"."outbox" (
	"id" uuid PRIMARY KEY NOT NULL,
	"sequence" bigint GENERATED ALWAYS AS IDENTITY (sequence name "wallet"."outbox_sequence_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"event_type" text NOT NULL,
	"subject" text NOT NULL,
	"tenant_id" text DEFAULT '' NOT NULL,
	"payload" "bytea",
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"published_at" timestamp with time zone
);
--> statement-breakpoint
CREATE INDEX "outbox_unpublished_idx" ON "wallet"."outbox" USING btree ("sequence") WHERE "wallet"."outbox"."published_at" is null;--> statement-breakpoint
CREATE INDEX "outbox_published_idx" ON "wallet"."outbox" USING btree ("published_at") WHERE "wallet"."outbox"."published_at" is not null;