/**
 * Builds a BlobService from its URL (docs/architecture.md#service-urls): `memory://`,
 * `pack:///dir`, `objectstore+<url>`, `grpc+unix|http|https://…`, and
 * `cache://?near=URL&far=URL` composing two of them (docs/storage.md#near-cache).
 *
 * @module
 */
import {
  cacheServiceFromUrl,
  checkMemoryUrl,
  fromBackend,
  inServiceUrl,
  parseServiceUrl,
  unknownScheme,
  urlScheme,
} from "../service_url.ts";
import { CacheBlobService } from "./cache.ts";
import { MemoryBlobService } from "./memory.ts";
import type { BlobService } from "./service.ts";

/** Constructs the blob service `url` names. Throws `StorageError` for a bad URL. */
export function blobServiceFromUrl(url: string): Promise<BlobService> {
  try {
    const parsed = parseServiceUrl(url);
    switch (urlScheme(parsed)) {
      case "memory":
        checkMemoryUrl(parsed);
        return Promise.resolve(new MemoryBlobService());
      case "pack":
        return fromBackend(
          () => import("./pack.ts"),
          (m) => m.packBlobServiceFromUrl(parsed),
          "blob",
          url,
        );
      case "grpc+unix":
      case "grpc+http":
      case "grpc+https":
        // Loaded only here: grpc-js would add 60-70 ms to every local start-up.
        return import("./grpc.ts").then((m) => m.GrpcBlobService.fromUrl(url));
      case "cache":
        return cacheServiceFromUrl<BlobService>(
          parsed,
          blobServiceFromUrl,
          (near, far) => new CacheBlobService(near, far),
        );
      default:
        if (urlScheme(parsed).startsWith("objectstore+")) {
          return fromBackend(
            () => import("./objectstore.ts"),
            (m) => m.objectStoreBlobServiceFromUrl(parsed),
            "blob",
            url,
          );
        }
        throw unknownScheme(parsed, "blob");
    }
  } catch (err) {
    return Promise.reject(inServiceUrl(err, "blob", url));
  }
}
