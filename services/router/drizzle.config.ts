import { defineConfig } from "drizzle-kit";

export default defineConfig({
  dialect: "postgresql",
  schema: "./services/router/schema.ts",
  out: "./services/router/migrations",
  schemaFilter: ["router"],
});
