CREATE TABLE "router"."gateway_calls" (
	"payment_id" text NOT NULL,
	"sequence" integer NOT NULL,
	"at" timestamp with time zone NOT NULL,
	"gateway" text NOT NULL,
	"operation" text NOT NULL,
	"reference" text NOT NULL,
	"candidates" jsonb,
	"reason" text NOT NULL,
	"outcome" text NOT NULL,
	"code" text DEFAULT '' NOT NULL,
	"action" text DEFAULT '' NOT NULL,
	"gateway_code" text DEFAULT '' NOT NULL,
	"gateway_transaction_id" text DEFAULT '' NOT NULL,
	"message" text DEFAULT '' NOT NULL,
	"latency_ms" integer DEFAULT 0 NOT NULL,
	CONSTRAINT "gateway_calls_pkey" PRIMARY KEY("payment_id","sequence")
);
--> statement-breakpoint
ALTER TABLE "router"."payments" ADD COLUMN "instrument" jsonb;--> statement-breakpoint
ALTER TABLE "router"."payments" ADD COLUMN "gateway" text DEFAULT '' NOT NULL;--> statement-breakpoint
ALTER TABLE "router"."payments" ADD COLUMN "gateway_transaction_id" text DEFAULT '' NOT NULL;--> statement-breakpoint
ALTER TABLE "router"."payments" ADD COLUMN "hold_id" text DEFAULT '' NOT NULL;--> statement-breakpoint
ALTER TABLE "router"."payments" ADD COLUMN "next_check_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "router"."payments" ADD COLUMN "checks" integer DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE "router"."payments" ADD COLUMN "needs_reconciliation" boolean DEFAULT false NOT NULL;--> statement-breakpoint
ALTER TABLE "router"."gateway_calls" ADD CONSTRAINT "gateway_calls_payment_id_payments_id_fk" FOREIGN KEY ("payment_id") REFERENCES "router"."payments"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "payments_outcome_unknown_idx" ON "router"."payments" USING btree ("next_check_at") WHERE "router"."payments"."status" = 3;--> statement-breakpoint
ALTER TABLE "router"."payments" ADD CONSTRAINT "payments_wallets_by_kind" CHECK (case "router"."payments"."kind"
      when 1 then "router"."payments"."source_wallet_id" <> '' and "router"."payments"."destination_wallet_id" <> ''
      when 2 then "router"."payments"."source_wallet_id" = '' and "router"."payments"."destination_wallet_id" <> ''
      when 3 then "router"."payments"."source_wallet_id" <> '' and "router"."payments"."destination_wallet_id" = ''
      else "router"."payments"."source_wallet_id" <> '' end);--> statement-breakpoint
ALTER TABLE "router"."payments" ADD CONSTRAINT "payments_gateway_kinds_have_instrument" CHECK (("router"."payments"."kind" in (2, 3)) <= ("router"."payments"."instrument" is not null));