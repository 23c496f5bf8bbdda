import { defineConfig } from "drizzle-kit";

export default defineConfig({
  dialect: "postgresql",
  schema: "./services/edge/schema.ts",
  out: "./services/edge/migrations",
  schemaFilter: ["edge"],
});
