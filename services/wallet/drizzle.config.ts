import { defineConfig } from "drizzle-kit";

export default defineConfig({
  dialect: "postgresql",
  schema: "./services/wallet/schema.ts",
  out: "./services/wallet/migrations",
  schemaFilter: ["wallet"],
});
