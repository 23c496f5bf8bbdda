CREATE SCHEMA "edge";
--> statement-breakpoint
CREATE TABLE "edge"."api_keys" (
	"id" text PRIMARY KEY NOT NULL,
	"tenant_id" text NOT NULL,
	"secret_hash" "bytea" NOT NULL,
	"scope" smallint NOT NULL,
	"label" text DEFAULT '' NOT NULL,
	"rate_limit_per_second" integer,
	"rate_limit_burst" integer,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"revoked_at" timestamp with time zone,
	CONSTRAINT "api_keys_scope_known" CHECK ("edge"."api_keys"."scope" in (1, 2)),
	CONSTRAINT "api_keys_rate_positive" CHECK ("edge"."api_keys"."rate_limit_per_second" is null or "edge"."api_keys"."rate_limit_per_second" > 0),
	CONSTRAINT "api_keys_burst_positive" CHECK ("edge"."api_keys"."rate_limit_burst" is null or "edge"."api_keys"."rate_limit_burst" > 0)
);
--> statement-breakpoint
CREATE TABLE "edge"."idempotency_keys" (
	"tenant_id" text NOT NULL,
	"key" text NOT NULL,
	"method" text NOT NULL,
	"fingerprint" "bytea" NOT NULL,
	"request" "bytea" NOT NULL,
	"state" smallint NOT NULL,
	"locked_until" timestamp with time zone NOT NULL,
	"attempts" integer DEFAULT 1 NOT NULL,
	"response" "bytea",
	"error_code" integer,
	"error_message" text,
	"error_details" text,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"completed_at" timestamp with time zone,
	"expires_at" timestamp with time zone NOT NULL,
	CONSTRAINT "idempotency_keys_pk" PRIMARY KEY("tenant_id","key"),
	CONSTRAINT "idempotency_keys_state_known" CHECK ("edge"."idempotency_keys"."state" in (1, 2)),
	CONSTRAINT "idempotency_keys_completed_has_outcome" CHECK ("edge"."idempotency_keys"."state" = 1 or "edge"."idempotency_keys"."response" is not null or "edge"."idempotency_keys"."error_code" is not null)
);
--> statement-breakpoint
CREATE TABLE "edge"."tenants" (
	"id" text PRIMARY KEY NOT NULL,
	"name" text NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
ALTER TABLE "edge"."api_keys" ADD CONSTRAINT "api_keys_tenant_id_tenants_id_fk" FOREIGN KEY ("tenant_id") REFERENCES "edge"."tenants"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "api_keys_tenant_idx" ON "edge"."api_keys" USING btree ("tenant_id","created_at");--> statement-breakpoint
CREATE INDEX "idempotency_keys_lease_idx" ON "edge"."idempotency_keys" USING btree ("locked_until") WHERE "edge"."idempotency_keys"."state" = 1;--> statement-breakpoint
CREATE INDEX "idempotency_keys_expiry_idx" ON "edge"."idempotency_keys" USING btree ("expires_at");