CREATE INDEX "outbox_published_idx" ON "ledger"."outbox" USING btree ("published_at") WHERE "ledger"."outbox"."published_at" is not null;--> statement-breakpoint
-- Rows the Ledger wrote before any relay existed were never meant to be published (and carry the
-- old event type): mark them published, so that a first relay does not replay the whole history.
UPDATE "ledger"."outbox" SET "published_at" = now() WHERE "published_at" IS NULL AND "event_type" <> 'ledger.transfer.created';
