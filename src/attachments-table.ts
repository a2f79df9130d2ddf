/**
 * Which table holds the cluster bus' attachments (binary messages, messages
 * over `payloadThreshold`), resolved once per node the way
 * `@socket.io/postgres-adapter` and `@socket.io/postgres-emitter` resolve it:
 * they write `INSERT INTO ${tableName}`, so a bare name goes through the
 * pool's `search_path` (usually `public`). Every node, ours or theirs, must
 * use the same table: a node reading an attachment id in another table gets
 * nothing, or another message's row (caught by the bus, see cluster-bus.ts).
 *
 * The name is resolved with `to_regclass` and then used schema-qualified, so
 * runtime SQL still does not depend on `search_path` after the start. A
 * missing table is reported at start, naming the option.
 */
import { debug } from "./debug.js";
import type { Queryable } from "./sql/bounded-queries.js";
import { qualifiedName, quoteIdentifier } from "./sql/identifiers.js";

/** How `tableName` was given (see options.ts). */
export interface AttachmentsTableSpec {
  /** Set for `schema.table`; undefined for a bare name, found through the search path. */
  readonly schema: string | undefined;
  readonly table: string;
  /**
   * For the default name only: the schema whose migrated table is used when the
   * search path has no such table (a cluster that never ran upstream).
   */
  readonly fallbackSchema: string | undefined;
}

/** A table still missing is reported again after this long (each use looks again, so creating it later works). */
const REPORT_AGAIN_AFTER_MS = 5000;

export class AttachmentsTable {
  private resolved: string | undefined;
  private pending: Promise<string> | undefined;
  private reportedAt = Number.NEGATIVE_INFINITY;

  constructor(
    private readonly pool: Queryable,
    private readonly spec: AttachmentsTableSpec,
    private readonly onError: (err: Error) => void,
  ) {}

  /** The qualified name once resolved; before that, the name as upstream would write it. */
  get current(): string {
    if (this.resolved) return this.resolved;
    const { schema, table } = this.spec;
    return schema === undefined ? quoteIdentifier(table) : qualifiedName(schema, table);
  }

  /**
   * The qualified name; rejects while the table cannot be found. Until found,
   * every use looks again (a table created after the start is picked up), and
   * the failure is reported at most every few seconds.
   */
  name(): Promise<string> {
    if (this.resolved) return Promise.resolve(this.resolved);
    this.pending ??= this.resolve().then(
      (name) => {
        this.resolved = name;
        this.pending = undefined;
        return name;
      },
      (err: unknown) => {
        this.pending = undefined;
        const failure = err instanceof Error ? err : new Error(String(err));
        if (Date.now() - this.reportedAt >= REPORT_AGAIN_AFTER_MS) {
          this.reportedAt = Date.now();
          this.onError(failure);
        }
        throw failure;
      },
    );
    return this.pending;
  }

  private async resolve(): Promise<string> {
    const { schema, table, fallbackSchema } = this.spec;
    const given = schema === undefined ? table : `${schema}.${table}`;
    const found = await this.lookUp(schema === undefined ? quoteIdentifier(table) : qualifiedName(schema, table));
    if (found) {
      debug("attachments table: %s", found);
      return found;
    }
    if (schema === undefined && fallbackSchema !== undefined) {
      const ours = await this.lookUp(qualifiedName(fallbackSchema, table));
      if (ours) {
        debug("attachments table: %s (none on the search path)", ours);
        return ours;
      }
      throw new Error(
        `socket.io-postgres-recovery: the attachments table (option "tableName", default "${table}") does not exist: ` +
          `not on the pool's search_path, where @socket.io/postgres-adapter and @socket.io/postgres-emitter look for it, ` +
          `nor in schema "${fallbackSchema}" (run \`socket.io-postgres-recovery migrate\`). ` +
          "Binary and large cluster messages (over payloadThreshold) cannot be sent or received until it exists",
      );
    }
    const where =
      schema === undefined
        ? `on the pool's search_path (a bare name is looked up there, as @socket.io/postgres-adapter and @socket.io/postgres-emitter do; name it "schema.table" otherwise)`
        : "";
    throw new Error(
      `socket.io-postgres-recovery: the table of option "tableName" (${JSON.stringify(given)}) does not exist ${where}`.trimEnd() +
        ". Binary and large cluster messages (over payloadThreshold) cannot be sent or received until it exists",
    );
  }

  /** `schema.table` of the relation the (quoted) name designates, or undefined. */
  private async lookUp(quotedName: string): Promise<string | undefined> {
    const { rows } = await this.pool.query<{ schema: string; table: string }>(
      `SELECT n.nspname AS schema, c.relname AS table
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = to_regclass($1)`,
      [quotedName],
    );
    const row = rows[0];
    return row ? qualifiedName(row.schema, row.table) : undefined;
  }
}
