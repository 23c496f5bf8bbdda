-- The journal is append-only: refuse UPDATE and DELETE on transfers and on the hash chain, so a
-- bug or a careless query cannot rewrite history. (A superuser can still disable the triggers;
-- the hash chain and `npm run ledger:verify` catch that.)
CREATE FUNCTION "ledger"."refuse_journal_change"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'ledger journal is append-only: % on %.% refused', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
    USING ERRCODE = 'insufficient_privilege';
END;
$$;
--> statement-breakpoint
CREATE TRIGGER "transfers_append_only" BEFORE UPDATE OR DELETE ON "ledger"."transfers"
  FOR EACH ROW EXECUTE FUNCTION "ledger"."refuse_journal_change"();
--> statement-breakpoint
CREATE TRIGGER "journal_batches_append_only" BEFORE UPDATE OR DELETE ON "ledger"."journal_batches"
  FOR EACH ROW EXECUTE FUNCTION "ledger"."refuse_journal_change"();
--> statement-breakpoint
-- The head starts before batch 1 with an all-zero hash.
INSERT INTO "ledger"."journal_head" ("id", "last_batch", "last_sequence", "last_hash")
  VALUES (1, 0, 0, decode(repeat('00', 32), 'hex'));
