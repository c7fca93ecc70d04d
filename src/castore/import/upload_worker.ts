/**
 * Worker side of {@linkcode WorkerUploadPool} (see `upload_pool.ts`): opens
 * its own BlobService from a URL and uploads local files on request, so
 * hashing, chunking and compression of many files run on more than one
 * core.
 *
 * Protocol (structured-clone messages):
 * - out first: `{ loaded: true }` once this module is evaluated (messages
 *   sent to a Worker before its handler exists can be lost, so the pool
 *   waits for this before sending anything);
 * - in: `{ init: url }` once, then `{ id, path, size }` per file, then `{ close: true }`;
 * - out: `{ ready: true }` or `{ initError }`, `{ id, digest }` or `{ id, error, detail }`,
 *   `{ closed: true }`.
 *
 * @module
 */
/// <reference lib="deno.worker" />
import { blobServiceFromUrl } from "../blob/from_url.ts";
import type { BlobService } from "../blob/service.ts";
import { errorMessage } from "../../errors.ts";
import { IngestError, uploadFile } from "./fs.ts";

let blob: BlobService | undefined;

self.onmessage = async (e: MessageEvent) => {
  const m = e.data;
  if (typeof m.init === "string") {
    try {
      blob = await blobServiceFromUrl(m.init);
      self.postMessage({ ready: true });
    } catch (err) {
      self.postMessage({ initError: errorMessage(err) });
    }
    return;
  }
  if (m.close) {
    await blob?.close().catch(() => {});
    self.postMessage({ closed: true });
    return;
  }
  try {
    const digest = await uploadFile(blob!, m.path, m.size);
    self.postMessage({ id: m.id, digest });
  } catch (err) {
    const message = errorMessage(err);
    const detail = err instanceof IngestError ? err.detail : message;
    self.postMessage({ id: m.id, error: message, detail });
  }
};

self.postMessage({ loaded: true });
