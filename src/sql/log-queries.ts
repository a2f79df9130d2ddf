/** SQL of the message log: namespaces' heads, appending batches, reading ranges. */
import type { Pool } from "pg";
import { decodePacket, type LogEntry } from "../codec.js";
import { qualifiedName } from "./identifiers.js";

export interface NamespaceRow {
  id: number;
  head: number;
}

export interface AppendResult {
  /** Offset of the first entry of the batch; the others follow densely. */
  from: number;
}

/** Typed access to the log tables of one schema. */
export class LogQueries {
  private readonly namespaces: string;
  private readonly log: string;

  constructor(
    private readonly pool: Pool,
    schema: string,
  ) {
    this.namespaces = qualifiedName(schema, "namespaces");
    this.log = qualifiedName(schema, "log_entries");
  }

  /** Creates the namespace's row if needed; returns its id and current head. */
  async namespace(name: string): Promise<NamespaceRow> {
    await this.pool.query(`INSERT INTO ${this.namespaces} (name) VALUES ($1) ON CONFLICT (name) DO NOTHING`, [name]);
    const { rows } = await this.pool.query<{ id: number; head: string }>(
      `SELECT id, head::text AS head FROM ${this.namespaces} WHERE name = $1`,
      [name],
    );
    const row = rows[0];
    if (!row) throw new Error(`socket.io-postgres-recovery: namespace row for "${name}" vanished`);
    return { id: row.id, head: Number(row.head) };
  }

  /**
   * Appends a batch in one statement, hence one round trip and one
   * transaction: bump the head (its row lock serializes the namespace's
   * writers until commit, so offsets are dense and in commit order), insert
   * the rows, and NOTIFY once with `namespaceId|from|count|inline`, where
   * `inline` is the batch itself when it fits in a NOTIFY payload, else empty
   * (receivers then read the rows).
   */
  async append(namespaceId: number, payloads: Buffer[], channel: string, inline: string): Promise<AppendResult> {
    const { rows } = await this.pool.query<{ head: string }>(
      `WITH bumped AS (
         UPDATE ${this.namespaces} SET head = head + $2 WHERE id = $1 RETURNING head
       ), inserted AS (
         INSERT INTO ${this.log} (namespace_id, "offset", payload)
         SELECT $1, bumped.head - $2 + entry.ord, entry.payload
         FROM bumped, unnest($3::bytea[]) WITH ORDINALITY AS entry(payload, ord)
       )
       SELECT bumped.head::text AS head,
              pg_notify($4, concat_ws('|', $1::text, (bumped.head - $2 + 1)::text, $2::text, $5::text))
       FROM bumped`,
      [namespaceId, payloads.length, payloads, channel, inline],
    );
    const row = rows[0];
    if (!row) throw new Error(`socket.io-postgres-recovery: namespace ${namespaceId} has no row; was the schema migrated?`);
    return { from: Number(row.head) - payloads.length + 1 };
  }

  /**
   * Committed entries with offsets in (after, upTo], oldest first, at most
   * `limit` of them. `upTo` undefined: up to the newest committed entry.
   * Also returns the stored bytes, for replay limits.
   */
  async range(
    namespaceId: number,
    after: number,
    upTo: number | undefined,
    limit: number,
  ): Promise<{ entries: LogEntry[]; bytes: number }> {
    // The text alias must not be named "offset": ORDER BY would then sort the text, not the number.
    const { rows } = await this.pool.query<{ offset_text: string; payload: Buffer }>(
      `SELECT "offset"::text AS offset_text, payload FROM ${this.log}
       WHERE namespace_id = $1 AND "offset" > $2 AND ($3::bigint IS NULL OR "offset" <= $3)
       ORDER BY "offset" LIMIT $4`,
      [namespaceId, after, upTo ?? null, limit],
    );
    let bytes = 0;
    const entries = rows.map((row) => {
      bytes += row.payload.length;
      return decodePacket(Number(row.offset_text), row.payload);
    });
    return { entries, bytes };
  }
}
