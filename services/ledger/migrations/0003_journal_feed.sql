CREATE TABLE "ledger"."relay_cursor" (
	"id" smallint PRIMARY KEY NOT NULL,
	"last_batch" bigint NOT NULL
);
--> statement-breakpoint
-- The journal becomes the Ledger's outbox. The relay starts after the last batch whose every
-- transfer event the old outbox had published; later batches go out as ledger.batch.committed.
INSERT INTO "ledger"."relay_cursor" ("id", "last_batch")
  SELECT 1, coalesce(
    (SELECT min(t."batch") - 1 FROM "ledger"."outbox" o JOIN "ledger"."transfers" t ON o."subject" = 'transfer/' || t."id"
      WHERE o."published_at" IS NULL),
    (SELECT "last_batch" FROM "ledger"."journal_head" WHERE "id" = 1));
--> statement-breakpoint
DROP TABLE "ledger"."outbox" CASCADE;
