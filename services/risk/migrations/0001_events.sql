CREATE TABLE "risk"."inbox" (
	"consumer" text NOT NULL,
	"event_id" text NOT NULL,
	"processed_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "inbox_consumer_event_id_pk" PRIMARY KEY("consumer","event_id")
);
--> statement-breakpoint
CREATE TABLE "risk"."outbox" (
	"id" uuid PRIMARY KEY NOT NULL,
	"sequence" bigint GENERATED ALWAYS AS IDENTITY (sequence name "risk"."outbox_sequence_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"event_type" text NOT NULL,
	"subject" text NOT NULL,
	"tenant_id" text DEFAULT '' NOT NULL,
	"payload" "bytea",
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"published_at" timestamp with time zone
);
--> statement-breakpoint
CREATE TABLE "risk"."parked_events" (
	"id" bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "risk"."parked_events_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"consumer" text NOT NULL,
	"event_id" text NOT NULL,
	"event_type" text NOT NULL,
	"body" "bytea" NOT NULL,
	"reason" text NOT NULL,
	"attempts" integer NOT NULL,
	"parked_at" timestamp with time zone DEFAULT now() NOT NULL,
	"replayed_at" timestamp with time zone,
	"replayed_by" text
);
--> statement-breakpoint
CREATE INDEX "inbox_processed_idx" ON "risk"."inbox" USING btree ("processed_at");--> statement-breakpoint
CREATE INDEX "outbox_unpublished_idx" ON "risk"."outbox" USING btree ("sequence") WHERE "risk"."outbox"."published_at" is null;--> statement-breakpoint
CREATE INDEX "outbox_published_idx" ON "risk"."outbox" USING btree ("published_at") WHERE "risk"."outbox"."published_at" is not null;--> statement-breakpoint
CREATE INDEX "parked_events_open_idx" ON "risk"."parked_events" USING btree ("consumer","id") WHERE "risk"."parked_events"."replayed_at" is null;