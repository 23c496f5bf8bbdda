CREATE SCHEMA "risk";
--> statement-breakpoint
CREATE TABLE "risk"."blocklist" (
	"tenant_id" text NOT NULL,
	"kind" smallint NOT NULL,
	"value" text NOT NULL,
	"reason" text NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "blocklist_tenant_id_kind_value_pk" PRIMARY KEY("tenant_id","kind","value")
);
--> statement-breakpoint
CREATE TABLE "risk"."decisions" (
	"tenant_id" text NOT NULL,
	"payment_id" text NOT NULL,
	"user_id" text NOT NULL,
	"amount_minor" bigint NOT NULL,
	"currency" text NOT NULL,
	"decision" smallint NOT NULL,
	"score" integer NOT NULL,
	"reasons" jsonb NOT NULL,
	"flags" jsonb NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "decisions_tenant_id_payment_id_pk" PRIMARY KEY("tenant_id","payment_id")
);
--> statement-breakpoint
CREATE TABLE "risk"."flags" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"tenant_id" text NOT NULL,
	"payment_id" text NOT NULL,
	"user_id" text NOT NULL,
	"rule" text NOT NULL,
	"severity" smallint NOT NULL,
	"action" smallint NOT NULL,
	"detail" text NOT NULL,
	"created_at" timestamp with time zone NOT NULL
);
--> statement-breakpoint
CREATE TABLE "risk"."review_events" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"tenant_id" text NOT NULL,
	"payment_id" text NOT NULL,
	"status" smallint NOT NULL,
	"actor" text NOT NULL,
	"reason" text NOT NULL,
	"at" timestamp with time zone NOT NULL
);
--> statement-breakpoint
CREATE TABLE "risk"."reviews" (
	"tenant_id" text NOT NULL,
	"payment_id" text NOT NULL,
	"seq" bigserial NOT NULL,
	"user_id" text NOT NULL,
	"amount_minor" bigint NOT NULL,
	"currency" text NOT NULL,
	"status" smallint NOT NULL,
	"score" integer NOT NULL,
	"reasons" jsonb NOT NULL,
	"created_at" timestamp with time zone NOT NULL,
	"resolved_at" timestamp with time zone,
	"resolved_by" text DEFAULT '' NOT NULL,
	"resolution_reason" text DEFAULT '' NOT NULL,
	CONSTRAINT "reviews_tenant_id_payment_id_pk" PRIMARY KEY("tenant_id","payment_id")
);
--> statement-breakpoint
CREATE TABLE "risk"."settings" (
	"tenant_id" text PRIMARY KEY NOT NULL,
	"settings" jsonb NOT NULL,
	"version" bigint NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE INDEX "flags_tenant_id_idx" ON "risk"."flags" USING btree ("tenant_id","id" DESC NULLS LAST);--> statement-breakpoint
CREATE INDEX "flags_tenant_user_id_idx" ON "risk"."flags" USING btree ("tenant_id","user_id","id" DESC NULLS LAST);--> statement-breakpoint
CREATE INDEX "flags_tenant_payment_idx" ON "risk"."flags" USING btree ("tenant_id","payment_id");--> statement-breakpoint
CREATE INDEX "review_events_tenant_payment_idx" ON "risk"."review_events" USING btree ("tenant_id","payment_id","id");--> statement-breakpoint
CREATE INDEX "reviews_tenant_status_seq_idx" ON "risk"."reviews" USING btree ("tenant_id","status","seq");--> statement-breakpoint
CREATE INDEX "reviews_tenant_seq_idx" ON "risk"."reviews" USING btree ("tenant_id","seq");--> statement-breakpoint
CREATE INDEX "reviews_tenant_user_status_idx" ON "risk"."reviews" USING btree ("tenant_id","user_id","status");