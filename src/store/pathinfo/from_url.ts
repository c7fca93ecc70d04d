/**
 * Builds a PathInfoService from its URL (docs/architecture.md#service-urls;
 * SQLite in place of upstream's sled): `memory://`, `sqlite:///abs/path` or `sqlite://` (in memory),
 * `postgres://…` (or `postgresql://…`), `grpc+unix|http|https://…`.
 *
 * @module
 */
import { postgresConfigFromUrl } from "../../castore/postgres_url.ts";
import { sqlitePathFromUrl } from "../../castore/sqlite_db.ts";
import {
  checkMemoryUrl,
  fromBackend,
  inServiceUrl,
  parseServiceUrl,
  unknownScheme,
  urlScheme,
} from "../../castore/service_url.ts";
import { MemoryPathInfoService } from "./memory.ts";
import type { PathInfoService } from "./service.ts";

/** Constructs the path info service `url` names. Throws `StorageError` for a bad URL. */
export function pathInfoServiceFromUrl(url: string): Promise<PathInfoService> {
  try {
    const parsed = parseServiceUrl(url);
    switch (urlScheme(parsed)) {
      case "memory":
        checkMemoryUrl(parsed);
        return Promise.resolve(new MemoryPathInfoService());
      case "grpc+unix":
      case "grpc+http":
      case "grpc+https":
        // Loaded only here: grpc-js would add 60-70 ms to every local start-up.
        return import("./grpc.ts").then((m) => m.GrpcPathInfoService.fromUrl(url));
      case "sqlite":
        return fromBackend(
          () => import("./sqlite.ts"),
          (m) => new m.SqlitePathInfoService(sqlitePathFromUrl(parsed)),
          "path info",
          url,
        );
      case "postgres":
      case "postgresql":
        return fromBackend(
          () => import("./postgres.ts"),
          (m) => m.PostgresPathInfoService.open(postgresConfigFromUrl(parsed)),
          "path info",
          url,
        );
      default:
        throw unknownScheme(parsed, "path info");
    }
  } catch (err) {
    return Promise.reject(inServiceUrl(err, "path info", url));
  }
}
