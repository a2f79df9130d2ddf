import createDebug from "debug";

/** Debug output under the package's name, like the other Socket.IO adapters (`DEBUG=socket.io-postgres-recovery*`). */
export const debug = createDebug("socket.io-postgres-recovery");
