-- The Ledger's ids (accounts, transfers, the accounts and pending transfer a transfer names)
-- compare byte by byte. They are ASCII by validation, so nothing sorts differently for a caller;
-- but under the server's default collation (C.UTF-8 here, en_US elsewhere) every btree comparison
-- went through strcoll, and a 1,000-transfer commit, which probes and inserts thousands of index
-- keys under the journal head's lock, took 35.5-38.6 ms where it now takes 32.6-33.0 ms. The
-- order no longer depends on the server's locale either. The guard on accounts' id and currency
-- names the column, so it is set aside while the column changes. The indexes on these columns
-- are rebuilt under an exclusive lock: on a large journal, run this in a maintenance window.
DROP TRIGGER "accounts_identity_fixed" ON "ledger"."accounts";
--> statement-breakpoint
ALTER TABLE "ledger"."accounts" ALTER COLUMN "id" TYPE text COLLATE "C";
--> statement-breakpoint
ALTER TABLE "ledger"."transfers"
  ALTER COLUMN "id" TYPE text COLLATE "C",
  ALTER COLUMN "debit_account_id" TYPE text COLLATE "C",
  ALTER COLUMN "credit_account_id" TYPE text COLLATE "C",
  ALTER COLUMN "pending_id" TYPE text COLLATE "C";
--> statement-breakpoint
ALTER TABLE "ledger"."pending_transfers"
  ALTER COLUMN "id" TYPE text COLLATE "C",
  ALTER COLUMN "resolved_by" TYPE text COLLATE "C";
--> statement-breakpoint
ALTER TABLE "ledger"."transfer_failures" ALTER COLUMN "id" TYPE text COLLATE "C";
--> statement-breakpoint
CREATE TRIGGER "accounts_identity_fixed" BEFORE UPDATE OF "id", "currency" ON "ledger"."accounts"
  FOR EACH ROW WHEN (OLD."id" IS DISTINCT FROM NEW."id" OR OLD."currency" IS DISTINCT FROM NEW."currency")
  EXECUTE FUNCTION "ledger"."refuse_account_change"();
