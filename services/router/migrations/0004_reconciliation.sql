CREATE TABLE "router"."recon_finding_events" (
	"id" bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "router"."recon_finding_events_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"finding_id" text NOT NULL,
	"at" timestamp with time zone NOT NULL,
	"actor" text NOT NULL,
	"action" text NOT NULL,
	"note" text DEFAULT '' NOT NULL,
	"transfer_id" text DEFAULT '' NOT NULL
);
--> statement-breakpoint
CREATE TABLE "router"."recon_findings" (
	"id" text PRIMARY KEY NOT NULL,
	"type" smallint NOT NULL,
	"severity" smallint NOT NULL,
	"status" smallint NOT NULL,
	"subject" text NOT NULL,
	"payment_id" text DEFAULT '' NOT NULL,
	"tenant_id" text DEFAULT '' NOT NULL,
	"gateway" text DEFAULT '' NOT NULL,
	"gateway_transaction_id" text DEFAULT '' NOT NULL,
	"ledger_transfer_id" text DEFAULT '' NOT NULL,
	"expected_amount_minor" bigint DEFAULT 0 NOT NULL,
	"observed_amount_minor" bigint DEFAULT 0 NOT NULL,
	"expected_currency" text DEFAULT '' NOT NULL,
	"observed_currency" text DEFAULT '' NOT NULL,
	"detail" text NOT NULL,
	"run_id" text NOT NULL,
	"detected_at" timestamp with time zone NOT NULL,
	"resolved_at" timestamp with time zone,
	"resolved_by" text DEFAULT '' NOT NULL,
	"resolution_reason" text DEFAULT '' NOT NULL,
	"correction" jsonb,
	"correction_transfer_id" text DEFAULT '' NOT NULL,
	CONSTRAINT "recon_findings_type_subject" UNIQUE("type","subject"),
	CONSTRAINT "recon_findings_status_known" CHECK ("router"."recon_findings"."status" between 1 and 3)
);
--> statement-breakpoint
CREATE TABLE "router"."recon_leases" (
	"key" text PRIMARY KEY NOT NULL,
	"owner" text NOT NULL,
	"until" timestamp with time zone NOT NULL
);
--> statement-breakpoint
CREATE TABLE "router"."recon_pending" (
	"payment_id" text PRIMARY KEY NOT NULL,
	"since" timestamp with time zone NOT NULL
);
--> statement-breakpoint
CREATE TABLE "router"."recon_runs" (
	"id" text PRIMARY KEY NOT NULL,
	"trigger" text NOT NULL,
	"requested_by" text DEFAULT '' NOT NULL,
	"window_from" timestamp with time zone NOT NULL,
	"window_to" timestamp with time zone NOT NULL,
	"status" text NOT NULL,
	"started_at" timestamp with time zone NOT NULL,
	"finished_at" timestamp with time zone,
	"duration_ms" integer DEFAULT 0 NOT NULL,
	"payments_checked" bigint DEFAULT 0 NOT NULL,
	"gateway_transactions_checked" bigint DEFAULT 0 NOT NULL,
	"ledger_transfers_checked" bigint DEFAULT 0 NOT NULL,
	"checked" bigint DEFAULT 0 NOT NULL,
	"matched" bigint DEFAULT 0 NOT NULL,
	"deferred" bigint DEFAULT 0 NOT NULL,
	"findings_by_type" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"findings_opened" integer DEFAULT 0 NOT NULL,
	"auto_resolved" integer DEFAULT 0 NOT NULL,
	"error" text DEFAULT '' NOT NULL,
	CONSTRAINT "recon_runs_window" CHECK ("router"."recon_runs"."window_to" > "router"."recon_runs"."window_from")
);
--> statement-breakpoint
CREATE TABLE "router"."recon_watermark" (
	"name" text PRIMARY KEY NOT NULL,
	"window_end" timestamp with time zone NOT NULL,
	"updated_at" timestamp with time zone NOT NULL
);
--> statement-breakpoint
ALTER TABLE "router"."recon_finding_events" ADD CONSTRAINT "recon_finding_events_finding_id_recon_findings_id_fk" FOREIGN KEY ("finding_id") REFERENCES "router"."recon_findings"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "recon_finding_events_finding_idx" ON "router"."recon_finding_events" USING btree ("finding_id","id");--> statement-breakpoint
CREATE INDEX "recon_findings_status_idx" ON "router"."recon_findings" USING btree ("status","id");--> statement-breakpoint
CREATE INDEX "recon_findings_payment_idx" ON "router"."recon_findings" USING btree ("payment_id") WHERE "router"."recon_findings"."payment_id" <> '';