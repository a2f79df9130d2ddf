/** A free loopback port, for servers the project starts itself (embedded Postgres, demo nodes). */
import { createServer } from "node:net";

/** A port nobody listens on right now (asked of the OS, then released). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.unref();
    probe.on("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const address = probe.address();
      probe.close(() => {
        if (address !== null && typeof address === "object") resolve(address.port);
        else reject(new Error("could not read the probe's port"));
      });
    });
  });
}
