import { defineConfig } from "drizzle-kit";

export default defineConfig({
  dialect: "postgresql",
  schema: "./services/risk/schema.ts",
  out: "./services/risk/migrations",
  schemaFilter: ["risk"],
});
