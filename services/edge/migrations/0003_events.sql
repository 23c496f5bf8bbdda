CREATE TABLE "edge"."audit_events" (
	"event_id" text PRIMARY KEY NOT NULL,
	"type" text NOT NULL,
	"source" text NOT NULL,
	"subject" text NOT NULL,
	"tenant_id" text NOT NULL,
	"occurred_at" timestamp with time zone NOT NULL,
	"envelope" "bytea" NOT NULL,
	"recorded_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "edge"."inbox" (
	"consumer" text NOT NULL,
	"event_id" text NOT NULL,
	"processed_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "inbox_consumer_event_id_pk" PRIMARY KEY("consumer","event_id")
);
--> statement-breakpoint
CREATE TABLE "edge"."parked_events" (
	"id" bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "edge"."parked_events_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
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
CREATE INDEX "audit_events_subject_idx" ON "edge"."audit_events" USING btree ("subject","occurred_at");--> statement-breakpoint
CREATE INDEX "audit_events_tenant_idx" ON "edge"."audit_events" USING btree ("tenant_id","occurred_at");--> statement-breakpoint
CREATE INDEX "inbox_processed_idx" ON "edge"."inbox" USING btree ("processed_at");--> statement-breakpoint
CREATE INDEX "parked_events_open_idx" ON "edge"."parked_events" USING btree ("consumer","id") WHERE "edge"."parked_events"."replayed_at" is null;