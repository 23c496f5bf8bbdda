CREATE TABLE "wallet"."holds" (
	"id" text PRIMARY KEY NOT NULL,
	"tenant_id" text NOT NULL,
	"wallet_id" text NOT NULL,
	"destination_wallet_id" text NOT NULL,
	"amount_minor" bigint NOT NULL,
	"currency" text NOT NULL,
	"reference" text DEFAULT '' NOT NULL,
	"timeout_seconds" integer NOT NULL,
	"status" integer NOT NULL,
	"captured_minor" bigint DEFAULT 0 NOT NULL,
	"created_at" timestamp with time zone NOT NULL,
	"expires_at" timestamp with time zone NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "holds_amount_positive" CHECK ("wallet"."holds"."amount_minor" > 0),
	CONSTRAINT "holds_captured_within_amount" CHECK ("wallet"."holds"."captured_minor" >= 0 and "wallet"."holds"."captured_minor" <= "wallet"."holds"."amount_minor")
);
--> statement-breakpoint
CREATE TABLE "wallet"."outflow_totals" (
	"wallet_id" text NOT NULL,
	"day" date NOT NULL,
	"total_minor" bigint NOT NULL,
	CONSTRAINT "outflow_totals_wallet_id_day_pk" PRIMARY KEY("wallet_id","day"),
	CONSTRAINT "outflow_totals_not_negative" CHECK ("wallet"."outflow_totals"."total_minor" >= 0)
);
--> statement-breakpoint
CREATE TABLE "wallet"."outflows" (
	"operation_id" text PRIMARY KEY NOT NULL,
	"wallet_id" text NOT NULL,
	"day" date NOT NULL,
	"amount_minor" bigint NOT NULL,
	"refused" text,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "outflows_amount_positive" CHECK ("wallet"."outflows"."amount_minor" > 0)
);
--> statement-breakpoint
ALTER TABLE "wallet"."wallets" ADD COLUMN "frozen_reason" text DEFAULT '' NOT NULL;--> statement-breakpoint
ALTER TABLE "wallet"."wallets" ADD COLUMN "per_transaction_limit_minor" bigint DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE "wallet"."wallets" ADD COLUMN "daily_outflow_limit_minor" bigint DEFAULT 0 NOT NULL;--> statement-breakpoint
CREATE INDEX "holds_tenant_wallet_idx" ON "wallet"."holds" USING btree ("tenant_id","wallet_id");--> statement-breakpoint
CREATE INDEX "wallets_tenant_created_idx" ON "wallet"."wallets" USING btree ("tenant_id","created_at" DESC NULLS LAST,"id" DESC NULLS LAST);--> statement-breakpoint
CREATE INDEX "wallets_tenant_owner_created_idx" ON "wallet"."wallets" USING btree ("tenant_id","owner_id","created_at" DESC NULLS LAST,"id" DESC NULLS LAST);--> statement-breakpoint
ALTER TABLE "wallet"."wallets" ADD CONSTRAINT "wallets_limits_not_negative" CHECK ("wallet"."wallets"."per_transaction_limit_minor" >= 0 and "wallet"."wallets"."daily_outflow_limit_minor" >= 0);