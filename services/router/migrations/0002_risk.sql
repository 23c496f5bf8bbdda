ALTER TABLE "router"."payments" DROP CONSTRAINT "payments_status_known";--> statement-breakpoint
ALTER TABLE "router"."payments" ADD COLUMN "risk_decision" text DEFAULT '' NOT NULL;--> statement-breakpoint
ALTER TABLE "router"."payments" ADD COLUMN "risk_score" integer DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE "router"."payments" ADD COLUMN "risk_reasons" jsonb DEFAULT '[]'::jsonb NOT NULL;--> statement-breakpoint
ALTER TABLE "router"."payments" ADD COLUMN "payer" jsonb DEFAULT '{"userId":""}'::jsonb NOT NULL;--> statement-breakpoint
CREATE INDEX "payments_in_review_idx" ON "router"."payments" USING btree ("next_check_at") WHERE "router"."payments"."status" = 7;--> statement-breakpoint
ALTER TABLE "router"."payments" ADD CONSTRAINT "payments_status_known" CHECK ("router"."payments"."status" between 1 and 7);