import { defineConfig } from "drizzle-kit";

export default defineConfig({
  dialect: "postgresql",
  schema: "./services/ledger/schema.ts",
  out: "./services/ledger/migrations",
  schemaFilter: ["ledger"],
});
