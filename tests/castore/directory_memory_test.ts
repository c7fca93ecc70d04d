import { MemoryDirectoryService } from "../../src/castore/directory/memory.ts";
import { directoryServiceConformance } from "../conformance/directory_suite.ts";

directoryServiceConformance("memory", () => {
  const service = new MemoryDirectoryService();
  return Promise.resolve({ service, cleanup: () => service.close() });
});
