/**
 * Builds a DirectoryService from its URL (docs/architecture.md#service-urls;
 * SQLite in place of upstream's sled): `memory://`, `sqlite:///abs/path` or `sqlite://` (in memory),
 * `postgres://…` (or `postgresql://…`), `objectstore+<url>`, `grpc+unix|http|https://…`,
 * and `cache://?near=URL&far=URL` composing two of them (docs/storage.md#near-cache).
 *
 * @module
 */
import { postgresConfigFromUrl } from "../postgres_url.ts";
import { sqlitePathFromUrl } from "../sqlite_db.ts";
import {
  cacheServiceFromUrl,
  checkMemoryUrl,
  fromBackend,
  inServiceUrl,
  parseServiceUrl,
  unknownScheme,
  urlScheme,
} from "../service_url.ts";
import { CacheDirectoryService } from "./cache.ts";
import { MemoryDirectoryService } from "./memory.ts";
import type { DirectoryService } from "./service.ts";

/** Constructs the directory service `url` names. Throws `StorageError` for a bad URL. */
export function directoryServiceFromUrl(url: string): Promise<DirectoryService> {
  try {
    const parsed = parseServiceUrl(url);
    switch (urlScheme(parsed)) {
      case "memory":
        checkMemoryUrl(parsed);
        return Promise.resolve(new MemoryDirectoryService());
      case "grpc+unix":
      case "grpc+http":
      case "grpc+https":
        // Loaded only here: grpc-js would add 60-70 ms to every local start-up.
        return import("./grpc.ts").then((m) => m.GrpcDirectoryService.fromUrl(url));
      case "sqlite":
        return fromBackend(
          () => import("./sqlite.ts"),
          (m) => new m.SqliteDirectoryService(sqlitePathFromUrl(parsed)),
          "directory",
          url,
        );
      case "postgres":
      case "postgresql":
        return fromBackend(
          () => import("./postgres.ts"),
          (m) => m.PostgresDirectoryService.open(postgresConfigFromUrl(parsed)),
          "directory",
          url,
        );
      case "cache":
        return cacheServiceFromUrl<DirectoryService>(
          parsed,
          directoryServiceFromUrl,
          (near, far) => new CacheDirectoryService(near, far),
        );
      default:
        if (urlScheme(parsed).startsWith("objectstore+")) {
          return fromBackend(
            () => import("./objectstore.ts"),
            (m) => m.objectStoreDirectoryServiceFromUrl(parsed),
            "directory",
            url,
          );
        }
        throw unknownScheme(parsed, "directory");
    }
  } catch (err) {
    return Promise.reject(inServiceUrl(err, "directory", url));
  }
}
