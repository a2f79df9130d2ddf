import { defineConfig } from "drizzle-kit";

// `generate` needs no database: it diffs src/schema.ts against migrations/meta.
export default defineConfig({
  dialect: "postgresql",
  schema: "./src/schema.ts",
  out: "./migrations",
});
