CREATE SCHEMA "wallet";
--> statement-breakpoint
CREATE TABLE "wallet"."wallets" (
	"id" text PRIMARY KEY NOT NULL,
	"tenant_id" text NOT NULL,
	"owner_id" text NOT NULL,
	"currency" text NOT NULL,
	"kind" integer NOT NULL,
	"status" integer NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "wallets_tenant_owner_currency" UNIQUE("tenant_id","owner_id","currency"),
	CONSTRAINT "wallets_currency_iso" CHECK ("wallet"."wallets"."currency" ~ '^[A-Z]{3}$')
);
