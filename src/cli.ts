#!/usr/bin/env node
/**
 * Command-line tool: `socket.io-postgres-recovery <command> [options]`.
 * Exit code 0 on success, 1 when the operation failed, 2 when the command
 * line is wrong; see cli/main.ts.
 */
import { main } from "./cli/main.js";

process.exitCode = await main(process.argv.slice(2), process.env);
