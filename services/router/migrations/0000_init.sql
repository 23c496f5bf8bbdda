CREATE SCHEMA "router";
--> statement-breakpoint
CREATE TABLE "router"."payment_transitions" (
	"id" bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "router"."payment_transitions_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"payment_id" text NOT NULL,
	"from_status" smallint NOT NULL,
	"to_status" smallint NOT NULL,
	"at" timestamp with time zone NOT NULL,
	"reason" text DEFAULT '' NOT NULL
);
--> statement-breakpoint
CREATE TABLE "router"."payments" (
	"id" text PRIMARY KEY NOT NULL,
	"tenant_id" text NOT NULL,
	"idempotency_key" text NOT NULL,
	"fingerprint" text NOT NULL,
	"request" jsonb NOT NULL,
	"kind" smallint NOT NULL,
	"status" smallint NOT NULL,
	"amount_minor" bigint NOT NULL,
	"currency" text NOT NULL,
	"source_wallet_id" text NOT NULL,
	"destination_wallet_id" text NOT NULL,
	"fee_minor" bigint DEFAULT 0 NOT NULL,
	"refunded_minor" bigint DEFAULT 0 NOT NULL,
	"failure_code" text DEFAULT '' NOT NULL,
	"failure_message" text DEFAULT '' NOT NULL,
	"reference" text DEFAULT '' NOT NULL,
	"refunded_payment_id" text,
	"transfer_id" text DEFAULT '' NOT NULL,
	"created_at" timestamp with time zone NOT NULL,
	"updated_at" timestamp with time zone NOT NULL,
	"version" integer DEFAULT 0 NOT NULL,
	"lease_until" timestamp with time zone,
	CONSTRAINT "payments_tenant_idempotency_key" UNIQUE("tenant_id","idempotency_key"),
	CONSTRAINT "payments_amount_positive" CHECK ("router"."payments"."amount_minor" > 0),
	CONSTRAINT "payments_fee_within_amount" CHECK ("router"."payments"."fee_minor" >= 0 and "router"."payments"."fee_minor" < "router"."payments"."amount_minor"),
	CONSTRAINT "payments_refunded_within_amount" CHECK ("router"."payments"."refunded_minor" >= 0 and "router"."payments"."refunded_minor" <= "router"."payments"."amount_minor"),
	CONSTRAINT "payments_wallets_differ" CHECK ("router"."payments"."source_wallet_id" <> "router"."payments"."destination_wallet_id"),
	CONSTRAINT "payments_currency_iso" CHECK ("router"."payments"."currency" ~ '^[A-Z]{3}$'),
	CONSTRAINT "payments_status_known" CHECK ("router"."payments"."status" between 1 and 6),
	CONSTRAINT "payments_kind_known" CHECK ("router"."payments"."kind" between 1 and 4),
	CONSTRAINT "payments_refund_names_payment" CHECK (("router"."payments"."kind" = 4) = ("router"."payments"."refunded_payment_id" is not null))
);
--> statement-breakpoint
CREATE TABLE "router"."refund_refusals" (
	"tenant_id" text NOT NULL,
	"idempotency_key" text NOT NULL,
	"fingerprint" text NOT NULL,
	"request" jsonb NOT NULL,
	"code" text NOT NULL,
	"message" text NOT NULL,
	"created_at" timestamp with time zone NOT NULL,
	CONSTRAINT "refund_refusals_pkey" PRIMARY KEY("tenant_id","idempotency_key")
);
--> statement-breakpoint
ALTER TABLE "router"."payment_transitions" ADD CONSTRAINT "payment_transitions_payment_id_payments_id_fk" FOREIGN KEY ("payment_id") REFERENCES "router"."payments"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "router"."payments" ADD CONSTRAINT "payments_refunded_payment_fk" FOREIGN KEY ("refunded_payment_id") REFERENCES "router"."payments"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "payment_transitions_payment_idx" ON "router"."payment_transitions" USING btree ("payment_id","id");--> statement-breakpoint
CREATE INDEX "payments_tenant_created_idx" ON "router"."payments" USING btree ("tenant_id","created_at","id");--> statement-breakpoint
CREATE INDEX "payments_tenant_source_idx" ON "router"."payments" USING btree ("tenant_id","source_wallet_id","created_at","id");--> statement-breakpoint
CREATE INDEX "payments_tenant_destination_idx" ON "router"."payments" USING btree ("tenant_id","destination_wallet_id","created_at","id");--> statement-breakpoint
CREATE INDEX "payments_refunded_payment_idx" ON "router"."payments" USING btree ("refunded_payment_id") WHERE "router"."payments"."refunded_payment_id" is not null;--> statement-breakpoint
CREATE INDEX "payments_unfinished_idx" ON "router"."payments" USING btree ("updated_at") WHERE "router"."payments"."status" in (1, 2);