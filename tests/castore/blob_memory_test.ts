import { MemoryBlobService } from "../../src/castore/blob/memory.ts";
import { blobServiceConformance } from "../conformance/blob_suite.ts";

blobServiceConformance("memory", () => {
  const service = new MemoryBlobService();
  return Promise.resolve({ service, cleanup: () => service.close() });
});
