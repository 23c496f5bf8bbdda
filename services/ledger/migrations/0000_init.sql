CREATE SCHEMA "ledger";
--> statement-breakpoint
CREATE TABLE "ledger"."accounts" (
	"id" text PRIMARY KEY NOT NULL,
	"currency" text NOT NULL,
	"code" integer NOT NULL,
	"owner_ref" text DEFAULT '' NOT NULL,
	"metadata" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"debits_must_not_exceed_credits" boolean DEFAULT false NOT NULL,
	"credits_must_not_exceed_debits" boolean DEFAULT false NOT NULL,
	"debits_posted" bigint DEFAULT 0 NOT NULL,
	"credits_posted" bigint DEFAULT 0 NOT NULL,
	"debits_pending" bigint DEFAULT 0 NOT NULL,
	"credits_pending" bigint DEFAULT 0 NOT NULL,
	"closed" boolean DEFAULT false NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "accounts_currency_iso" CHECK ("ledger"."accounts"."currency" ~ '^[A-Z]{3}$'),
	CONSTRAINT "accounts_totals_not_negative" CHECK ("ledger"."accounts"."debits_posted" >= 0 and "ledger"."accounts"."credits_posted" >= 0 and "ledger"."accounts"."debits_pending" >= 0 and "ledger"."accounts"."credits_pending" >= 0),
	CONSTRAINT "accounts_one_constraint" CHECK (not ("ledger"."accounts"."debits_must_not_exceed_credits" and "ledger"."accounts"."credits_must_not_exceed_debits")),
	CONSTRAINT "accounts_debits_within_credits" CHECK (not "ledger"."accounts"."debits_must_not_exceed_credits" or "ledger"."accounts"."debits_posted" + "ledger"."accounts"."debits_pending" <= "ledger"."accounts"."credits_posted"),
	CONSTRAINT "accounts_credits_within_debits" CHECK (not "ledger"."accounts"."credits_must_not_exceed_debits" or "ledger"."accounts"."credits_posted" + "ledger"."accounts"."credits_pending" <= "ledger"."accounts"."debits_posted")
);
--> statement-breakpoint
CREATE TABLE "ledger"."journal_batches" (
	"batch" bigint PRIMARY KEY NOT NULL,
	"first_sequence" bigint NOT NULL,
	"last_sequence" bigint NOT NULL,
	"previous_hash" "bytea" NOT NULL,
	"hash" "bytea" NOT NULL,
	"created_at" timestamp with time zone NOT NULL
);
--> statement-breakpoint
CREATE TABLE "ledger"."journal_head" (
	"id" smallint PRIMARY KEY NOT NULL,
	"last_batch" bigint NOT NULL,
	"last_sequence" bigint NOT NULL,
	"last_hash" "bytea" NOT NULL
);
--> statement-breakpoint
CREATE TABLE "ledger"."outbox" (
	"id" uuid PRIMARY KEY NOT NULL,
	"sequence" bigint GENERATED ALWAYS AS IDENTITY (sequence name "ledger"."outbox_sequence_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"event_type" text NOT NULL,
	"subject" text NOT NULL,
	"tenant_id" text DEFAULT '' NOT NULL,
	"payload" "bytea",
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"published_at" timestamp with time zone
);
--> statement-breakpoint
CREATE TABLE "ledger"."pending_transfers" (
	"id" text PRIMARY KEY NOT NULL,
	"status" smallint NOT NULL,
	"expires_at" timestamp with time zone,
	"resolved_by" text
);
--> statement-breakpoint
CREATE TABLE "ledger"."transfer_failures" (
	"id" text PRIMARY KEY NOT NULL,
	"result" integer NOT NULL,
	"kind" smallint NOT NULL,
	"debit_account_id" text NOT NULL,
	"credit_account_id" text NOT NULL,
	"amount_minor" bigint NOT NULL,
	"currency" text NOT NULL,
	"code" integer NOT NULL,
	"reference" text NOT NULL,
	"metadata" jsonb NOT NULL,
	"linked" boolean NOT NULL,
	"pending_id" text NOT NULL,
	"timeout_seconds" integer NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "ledger"."transfers" (
	"id" text PRIMARY KEY NOT NULL,
	"sequence" bigint NOT NULL,
	"batch" bigint NOT NULL,
	"kind" smallint NOT NULL,
	"debit_account_id" text NOT NULL,
	"credit_account_id" text NOT NULL,
	"amount_minor" bigint NOT NULL,
	"currency" text NOT NULL,
	"code" integer NOT NULL,
	"reference" text NOT NULL,
	"metadata" jsonb NOT NULL,
	"linked" boolean NOT NULL,
	"pending_id" text NOT NULL,
	"timeout_seconds" integer NOT NULL,
	"created_at" timestamp with time zone NOT NULL,
	CONSTRAINT "transfers_sequence_unique" UNIQUE("sequence"),
	CONSTRAINT "transfers_amount_positive" CHECK ("ledger"."transfers"."amount_minor" > 0),
	CONSTRAINT "transfers_accounts_differ" CHECK ("ledger"."transfers"."debit_account_id" <> "ledger"."transfers"."credit_account_id")
);
--> statement-breakpoint
ALTER TABLE "ledger"."pending_transfers" ADD CONSTRAINT "pending_transfers_id_transfers_id_fk" FOREIGN KEY ("id") REFERENCES "ledger"."transfers"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "ledger"."transfers" ADD CONSTRAINT "transfers_debit_account_id_accounts_id_fk" FOREIGN KEY ("debit_account_id") REFERENCES "ledger"."accounts"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "ledger"."transfers" ADD CONSTRAINT "transfers_credit_account_id_accounts_id_fk" FOREIGN KEY ("credit_account_id") REFERENCES "ledger"."accounts"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "outbox_unpublished_idx" ON "ledger"."outbox" USING btree ("sequence") WHERE "ledger"."outbox"."published_at" is null;--> statement-breakpoint
CREATE INDEX "pending_transfers_expiry_idx" ON "ledger"."pending_transfers" USING btree ("expires_at") WHERE "ledger"."pending_transfers"."status" = 1 and "ledger"."pending_transfers"."expires_at" is not null;--> statement-breakpoint
CREATE INDEX "transfers_debit_account_idx" ON "ledger"."transfers" USING btree ("debit_account_id","sequence");--> statement-breakpoint
CREATE INDEX "transfers_credit_account_idx" ON "ledger"."transfers" USING btree ("credit_account_id","sequence");